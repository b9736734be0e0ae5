package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/falguard/falguard/hack/fakefal"
	"github.com/falguard/falguard/sidecar/server"
)

func TestKeyReloadKeepsOpenRelayAndFlushesTokens(t *testing.T) {
	h := start(t)
	c, _, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatal(err)
	}
	roundTripJSON(t, c, map[string]any{"prompt": "before"})
	if st := h.status(h.base + "/api/fal/token?app=fal-ai/flux/dev"); st != 200 {
		t.Fatal(st)
	}

	// Rotate: kid2 is published, then kid1 revoked at fal.
	h.writeCreds(key2, defaultPolicy)
	h.eventually("reload", func() bool { return h.metric("falguard_sidecar_credential_reloads_total") == 2 })
	h.fal.RevokeKey("kid1")

	// The open relay was not dropped (fal checks the JWT only at the upgrade).
	roundTripJSON(t, c, map[string]any{"prompt": "during"})
	// New work uses kid2; the flushed cache does not hand out kid1's tokens.
	h.fal.ResetCalls()
	resp, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("proxy after rotation: %d", resp.StatusCode)
	}
	c2, resp2, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatalf("new relay after rotation: %v %v", err, resp2)
	}
	roundTripJSON(t, c2, map[string]any{"prompt": "after"})
	for _, call := range h.fal.Calls() {
		if call.KeyID != "kid2" {
			t.Fatalf("call after rotation used %q: %+v", call.KeyID, call)
		}
	}

	// A bad update keeps the last good key and is counted; the key is not logged.
	h.writeCreds("garbage-without-colon-"+secret1, defaultPolicy)
	h.eventually("reload error", func() bool { return h.metric("falguard_sidecar_credential_reload_errors_total") == 1 })
	h.writeCreds(key2, `{"version":1,"allowedApps":[]}`)
	h.eventually("reload error", func() bool { return h.metric("falguard_sidecar_credential_reload_errors_total") == 2 })
	if resp, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil); resp.StatusCode != 200 {
		t.Fatalf("last good key not kept: %d", resp.StatusCode)
	}
	if st := h.status(h.ops + "/readyz"); st != 200 {
		t.Fatalf("readyz %d after a bad update", st)
	}
	if !strings.Contains(h.logs.String(), "keeping the last good ones") {
		t.Fatalf("bad update not logged:\n%s", h.logs.String())
	}
}

// echoServer answers every request by echoing its headers back, in
// headers and body, as a careless upstream might.
func echoServer(t *testing.T) (string, string) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range r.Header {
			w.Header()["X-Echo-"+k] = v
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Header)
	}))
	t.Cleanup(srv.Close)
	pem := t.TempDir() + "/echo.pem"
	writePEM(t, pem, srv.Certificate().Raw)
	return srv.URL, pem
}

func TestKeyNeverLeaksEvenWhenFalEchoes(t *testing.T) {
	url, pem := echoServer(t)
	h := start(t, func(o *harnessOpts) {
		o.overrides = []string{"https://fal.run=" + url}
		o.cfg = append(o.cfg, func(c *server.Config) { c.UpstreamCAFile = pem })
	})
	resp, body := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", `{"x":1}`, map[string]string{"Authorization": "Key caller:caller-secret"})
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var echoed http.Header
	if err := json.Unmarshal(body, &echoed); err != nil {
		t.Fatal(err)
	}
	if echoed.Get("Authorization") == "" || echoed.Get("X-Fal-Client-Proxy") != "falguard/test" {
		t.Fatalf("upstream did not see the sidecar's headers: %v", echoed)
	}
	if strings.Contains(string(body), "caller-secret") {
		t.Fatal("the caller's Authorization was forwarded")
	}
	if echoed.Get("Cookie") != "" || echoed.Get("X-Fal-Target-Url") != "" {
		t.Fatalf("forwarded headers it should not: %v", echoed)
	}
	var all strings.Builder
	all.Write(body)
	for k, v := range resp.Header {
		fmt.Fprintf(&all, "%s: %s\n", k, v)
	}
	all.WriteString(h.metrics())
	all.WriteString(h.logs.String())
	if strings.Contains(all.String(), secret1) {
		t.Fatalf("the key secret leaked:\n%s", all.String())
	}
}

func TestFalDownSlowAndRecovering(t *testing.T) {
	h := start(t)

	// fal down: connections dropped without an answer.
	h.fal.SetFault(fakefal.Fault{Drop: true})
	resp, body := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil)
	if _, code := apiError(t, body); resp.StatusCode != 502 || code != "upstream_unavailable" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("fal down, proxy: %d %s", resp.StatusCode, body)
	}
	r2, err := client.Get(h.base + "/api/fal/token?app=fal-ai/flux/dev")
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	if _, code := apiError(t, b2); r2.StatusCode != 502 || code != "upstream_unavailable" {
		t.Fatalf("fal down, token: %d %s", r2.StatusCode, b2)
	}
	_, r3, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err == nil || r3 == nil || r3.StatusCode != 502 {
		t.Fatalf("fal down, relay: %v %v", err, r3)
	}
	if st := h.status(h.ops + "/readyz"); st != 200 {
		t.Fatalf("readiness must not depend on fal: %d", st)
	}

	// fal recovers: so does the sidecar, without a restart.
	h.fal.ClearFaults()
	h.eventually("token recovers", func() bool { return h.status(h.base+"/api/fal/token?app=fal-ai/flux/dev") == 200 })
	if resp, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil); resp.StatusCode != 200 {
		t.Fatalf("proxy after recovery: %d", resp.StatusCode)
	}

	// fal slow: the app gives up; the upstream call is cancelled, nothing
	// hangs. (Counted from here: keep-alive connections exist by now.)
	before := runtime.NumGoroutine()
	h.fal.SetFault(fakefal.Fault{Host: "fal.run", Latency: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	req, _ := http.NewRequestWithContext(ctx, "POST", h.base+"/api/fal/proxy", strings.NewReader("{}"))
	req.Header.Set("x-fal-target-url", "https://fal.run/fal-ai/flux/dev")
	if _, err := client.Do(req); err == nil {
		t.Fatal("slow fal answered within the client's timeout?")
	}
	cancel()
	h.fal.ClearFaults()
	if resp, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil); resp.StatusCode != 200 {
		t.Fatalf("after a slow call: %d", resp.StatusCode)
	}
	checkGoroutines(t, before)
}

func TestFalRefusingKeyAndRateLimiting(t *testing.T) {
	h := start(t)
	h.fal.SetFault(fakefal.Fault{RefuseKeyID: "kid1"})
	r, err := client.Get(h.base + "/api/fal/token?app=fal-ai/flux/dev")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if _, code := apiError(t, b); r.StatusCode != 502 || code != "upstream_key_refused" {
		t.Fatalf("refused key, token: %d %s", r.StatusCode, b)
	}
	if n := h.fal.CountCalls("rest.fal.ai", "/tokens/"); n != 1 {
		t.Fatalf("a refused key was retried %d times", n)
	}
	if resp, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil); resp.StatusCode != 401 {
		t.Fatalf("refused key, proxy: %d, want fal's 401", resp.StatusCode)
	}
	h.fal.ClearFaults()

	h.fal.SetFault(fakefal.Fault{Host: "rest.fal.ai", PathPrefix: "/tokens/", Status: 429, RetryAfter: "3"})
	r, err = client.Get(h.base + "/api/fal/token?app=fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(r.Body)
	r.Body.Close()
	if _, code := apiError(t, b); r.StatusCode != 429 || code != "upstream_rate_limited" || r.Header.Get("Retry-After") != "3" {
		t.Fatalf("fal 429 on tokens: %d %v %s", r.StatusCode, r.Header, b)
	}
	h.fal.SetFault(fakefal.Fault{Host: "fal.run", Status: 503, RetryAfter: "2", Times: 1})
	if resp, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil); resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("fal 503 not passed through: %d", resp.StatusCode)
	}
	if resp, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil); resp.StatusCode != 200 {
		t.Fatalf("after the 503: %d", resp.StatusCode)
	}
}

func TestClientVanishesMidStream(t *testing.T) {
	h := start(t)
	h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil) // warm keep-alive connections
	before := runtime.NumGoroutine()
	req, _ := http.NewRequest("POST", h.base+"/api/fal/proxy", strings.NewReader(`{"num_events":50,"event_delay_ms":100}`))
	req.Header.Set("x-fal-target-url", "https://fal.run/fal-ai/flux/dev/stream")
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first event: %q %v", line, err)
	}
	resp.Body.Close() // the app vanishes
	client.CloseIdleConnections()

	// A relay whose app vanishes without a close frame.
	conn, err := net.Dial("tcp", strings.TrimPrefix(h.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /realtime/fal-ai/fast-lcm-diffusion HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	status, _ := bufio.NewReader(conn).ReadString('\n')
	if !strings.Contains(status, "101") {
		t.Fatalf("upgrade: %q", status)
	}
	h.eventually("relay open", func() bool { return h.metric("falguard_sidecar_realtime_connections_open") == 1 })
	conn.Close()
	h.eventually("relay closed after the app vanished", func() bool { return h.metric("falguard_sidecar_realtime_connections_open") == 0 })
	checkGoroutines(t, before)
}

func TestShutdownWithOpenConnections(t *testing.T) {
	h := start(t, withCfg(func(c *server.Config) {
		c.MinShutdownDelay = 300 * time.Millisecond
		c.MaxShutdownDelay = 700 * time.Millisecond
	}))
	c, _, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatal(err)
	}
	roundTripJSON(t, c, map[string]any{"prompt": "a"})
	// An SSE stream that finishes within the drain window.
	req, _ := http.NewRequest("POST", h.base+"/api/fal/proxy", strings.NewReader(`{"num_events":4,"event_delay_ms":100}`))
	req.Header.Set("x-fal-target-url", "https://fal.run/fal-ai/flux/dev/stream")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	h.cancel() // SIGTERM
	h.eventually("readyz false", func() bool { return h.status(h.ops+"/readyz") == 503 })
	// Still serving during the minimum delay.
	if r, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil); r.StatusCode != 200 {
		t.Fatalf("not serving during the min delay: %d", r.StatusCode)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || strings.Count(string(body), "data: ") != 4 {
		t.Fatalf("in-flight stream cut: %v %q", err, body)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = c.ReadMessage()
	if code, _ := closeCode(err); code != websocket.CloseGoingAway {
		t.Fatalf("open relay closed with %d (%v), want 1001", code, err)
	}
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatal(err)
		}
		h.done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if time.Since(started) > 5*time.Second {
		t.Fatalf("shutdown took %v", time.Since(started))
	}
}

func TestOpsEndpointsQuitAndCap(t *testing.T) {
	h := start(t, withCfg(func(c *server.Config) { c.MaxConnections = 1 }))
	for _, p := range []string{"/livez", "/readyz", "/startupz", "/metrics"} {
		if st := h.status(h.ops + p); st != 200 {
			t.Errorf("%s: %d", p, st)
		}
	}
	checkMetricNames := func(m string) {
		for _, name := range []string{
			"falguard_sidecar_requests_total", "falguard_sidecar_upstream_request_duration_seconds",
			"falguard_sidecar_token_cache_hits_total", "falguard_sidecar_token_cache_misses_total",
			"falguard_sidecar_token_cache_refreshes_total", "falguard_sidecar_token_cache_errors_total",
			"falguard_sidecar_realtime_connections_open", "falguard_sidecar_relayed_bytes_total",
			"falguard_sidecar_relayed_messages_total", "falguard_sidecar_credential_reloads_total",
			"falguard_sidecar_credential_reload_errors_total", "falguard_sidecar_rate_limited_requests_total",
			"falguard_sidecar_connections_inflight", "falguard_sidecar_build_info",
		} {
			if !strings.Contains(m, "# TYPE "+name+" ") {
				t.Errorf("metric %s missing", name)
			}
		}
	}
	// At the connection cap: not ready, new requests get 503 with Retry-After.
	c, _, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatal(err)
	}
	roundTripJSON(t, c, map[string]any{"prompt": "a"})
	if st := h.status(h.ops + "/readyz"); st != 503 {
		t.Fatalf("readyz at cap: %d", st)
	}
	resp, body := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil)
	if _, code := apiError(t, body); resp.StatusCode != 503 || code != "too_many_connections" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the cap: %d %s", resp.StatusCode, body)
	}
	c.Close()
	h.eventually("below cap", func() bool { return h.status(h.ops+"/readyz") == 200 })
	checkMetricNames(h.metrics())
	if m := h.metrics(); !strings.Contains(m, `falguard_sidecar_app_requests_total{app="fal-ai/fast-lcm-diffusion"}`) ||
		!strings.Contains(m, `falguard_sidecar_requests_total{code="101",route="realtime"}`) {
		t.Fatalf("per-app / per-route metrics missing:\n%s", m)
	}

	// quitquitquit from loopback stops the sidecar without the min delay.
	r, err := http.Post(h.ops+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	select {
	case err := <-h.done:
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("quit: %d %v", r.StatusCode, err)
		}
		h.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("quitquitquit did not stop the sidecar")
	}
}

func TestAppQuitquitquitForLegacyJobs(t *testing.T) {
	h := start(t, withCfg(func(c *server.Config) { c.MinShutdownDelay = time.Minute }))
	if st := h.status(h.base + "/quitquitquit"); st != http.StatusMethodNotAllowed {
		t.Fatalf("GET /quitquitquit: %d", st)
	}
	r, err := http.Post(h.base+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	select {
	case err := <-h.done: // well before the one-minute min delay
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("quit: %d %v", r.StatusCode, err)
		}
		h.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("POST /quitquitquit did not stop the sidecar")
	}
}

func TestUpstreamBodyCutShowsAsTruncated(t *testing.T) {
	cut := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		fmt.Fprint(w, "data: {\"index\":0}\n\n")
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() // fal dies mid-stream
		}
	}))
	defer cut.Close()
	pem := t.TempDir() + "/cut.pem"
	writePEM(t, pem, cut.Certificate().Raw)
	h := start(t, func(o *harnessOpts) {
		o.overrides = []string{"https://fal.run=" + cut.URL}
		o.cfg = append(o.cfg, func(c *server.Config) { c.UpstreamCAFile = pem })
	})
	req, _ := http.NewRequest("POST", h.base+"/api/fal/proxy", strings.NewReader("{}"))
	req.Header.Set("x-fal-target-url", "https://fal.run/fal-ai/flux/dev/stream")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("a stream fal cut off ended cleanly for the app: %q", body)
	}
	if !strings.HasPrefix(string(body), "data: {\"index\":0}") {
		t.Fatalf("bytes before the cut lost: %q", body)
	}
}

func TestProxyHeadersRedirectsAndHopByHop(t *testing.T) {
	var seen http.Header
	var seenHost string
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen, seenHost = r.Header.Clone(), r.Host
		if strings.HasSuffix(r.URL.Path, "/redirect") {
			http.Redirect(w, r, "https://evil.example/next", http.StatusFound)
			return
		}
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Authenticate", "Basic")
		w.Header().Set("X-Fal-Request-Id", "req-1")
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {}\n\n")
	}))
	defer up.Close()
	pem := t.TempDir() + "/up.pem"
	writePEM(t, pem, up.Certificate().Raw)
	h := start(t, func(o *harnessOpts) {
		o.overrides = []string{"https://fal.run=" + up.URL}
		o.cfg = append(o.cfg, func(c *server.Config) { c.UpstreamCAFile = pem })
	})
	resp, body := h.proxy("POST", "https://fal.run/fal-ai/flux/dev/stream", "{}", map[string]string{
		"Accept": "text/event-stream", "x-fal-queue-priority": "low", "User-Agent": "app/1.0",
		"Cookie": "session=1", "X-Forwarded-For": "10.0.0.1", "Authorization": "Bearer app-token",
	})
	if resp.StatusCode != 200 || string(body) != "data: {}\n\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	for _, tc := range []struct{ header, want string }{
		{"Accept", "text/event-stream"}, // not forced to JSON
		{"X-Fal-Queue-Priority", "low"},
		{"User-Agent", "app/1.0"},
		{"Authorization", "Key " + key1},
		{"X-Fal-Client-Proxy", "falguard/test"},
		{"X-Fal-Target-Url", ""},
		{"Cookie", ""},
		{"X-Forwarded-For", ""},
	} {
		if got := seen.Get(tc.header); got != tc.want {
			t.Errorf("upstream saw %s %q, want %q", tc.header, got, tc.want)
		}
	}
	if seenHost != "fal.run" {
		t.Errorf("upstream Host %q, want the canonical fal.run", seenHost)
	}
	if resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("Proxy-Authenticate") != "" || resp.Header.Get("X-Fal-Request-Id") != "req-1" {
		t.Errorf("response headers: %v", resp.Header)
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", h.base+"/api/fal/proxy", nil)
	req.Header.Set("x-fal-target-url", "https://fal.run/fal-ai/flux/dev/redirect")
	r2, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusFound || r2.Header.Get("Location") != "https://evil.example/next" {
		t.Fatalf("redirect: %d %q, want fal's 302 passed back, not followed", r2.StatusCode, r2.Header.Get("Location"))
	}
}

func TestKeyMaskedWhenFalSplitsItAcrossChunks(t *testing.T) {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization") // "Key kid1:sec-one-..."
		half := len(auth) / 2
		w.Header().Set("X-Echo", auth)
		fmt.Fprintf(w, "data: %s", auth[:half])
		w.(http.Flusher).Flush()
		time.Sleep(50 * time.Millisecond) // a separate read on the sidecar's side
		fmt.Fprintf(w, "%s\n\n", auth[half:])
	}))
	defer up.Close()
	pem := t.TempDir() + "/up.pem"
	writePEM(t, pem, up.Certificate().Raw)
	h := start(t, func(o *harnessOpts) {
		o.overrides = []string{"https://fal.run=" + up.URL}
		o.cfg = append(o.cfg, func(c *server.Config) { c.UpstreamCAFile = pem })
	})
	resp, body := h.proxy("POST", "https://fal.run/fal-ai/flux/dev/stream", "{}", nil)
	want := "data: Key kid1:" + strings.Repeat("*", len(secret1)) + "\n\n"
	if resp.StatusCode != 200 || string(body) != want || strings.Contains(resp.Header.Get("X-Echo"), secret1) {
		t.Fatalf("got %d %q (X-Echo %q), want %q", resp.StatusCode, body, resp.Header.Get("X-Echo"), want)
	}
}
