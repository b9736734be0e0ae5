package server_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/falguard/falguard/hack/fakefal"
	"github.com/falguard/falguard/sidecar/server"
)

func TestProxyRunKeepsStatusHeadersAndUsesSidecarKey(t *testing.T) {
	h := start(t)
	resp, body := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", `{"prompt":"a cat"}`,
		map[string]string{"Authorization": "Key evil:caller-secret", "x-fal-request-timeout": "30", "Cookie": "session=1"})
	if resp.StatusCode != 200 || resp.Header.Get("x-fal-request-id") == "" {
		t.Fatalf("status %d, headers %v, body %s", resp.StatusCode, resp.Header, body)
	}
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil || out["prompt"] != "a cat" {
		t.Fatalf("body %s", body)
	}
	calls := h.fal.Calls()
	if len(calls) != 1 || calls[0].KeyID != "kid1" || calls[0].Host != "fal.run" || calls[0].Path != "/fal-ai/flux/dev" {
		t.Fatalf("fal saw %+v: want one call with the sidecar's key kid1, not the caller's", calls)
	}

	for _, tc := range []struct {
		status     int
		retryAfter string
	}{{401, ""}, {422, ""}, {429, "1"}, {500, ""}} {
		resp, body := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", fmt.Sprintf(`{"fail_status":%d}`, tc.status), nil)
		if resp.StatusCode != tc.status || resp.Header.Get("Retry-After") != tc.retryAfter || !bytes.Contains(body, []byte("detail")) {
			t.Errorf("fail_status %d: got %d (Retry-After %q) %s", tc.status, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
	}
}

func TestProxyBinaryBytesExact(t *testing.T) {
	h := start(t)
	resp, body := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", `{"binary_bytes":300000}`, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, fakefal.BinaryBody(300000)) || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("status %d, %d bytes, type %q", resp.StatusCode, len(body), resp.Header.Get("Content-Type"))
	}
}

func TestProxyStreamsSSE(t *testing.T) {
	h := start(t)
	req, _ := http.NewRequest("POST", h.base+"/api/fal/proxy", strings.NewReader(`{"num_events":3,"event_delay_ms":150}`))
	req.Header.Set("x-fal-target-url", "https://fal.run/fal-ai/flux/dev/stream")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("content-type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	var events []time.Duration
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			events = append(events, time.Since(start))
		}
	}
	if len(events) != 3 {
		t.Fatalf("got %d events (%v)\n%s", len(events), sc.Err(), h.logs.String())
	}
	// Streamed, not buffered: the first event arrived well before the last.
	if events[2]-events[0] < 200*time.Millisecond {
		t.Fatalf("events arrived together (%v): the proxy buffered the stream", events)
	}
}

func TestProxyQueueAndStorage(t *testing.T) {
	h := start(t)
	resp, body := h.proxy("POST", "https://queue.fal.run/fal-ai/flux/dev", `{"prompt":"x","queue_polls":1}`, map[string]string{"x-fal-queue-priority": "low"})
	var sub struct {
		RequestID string `json:"request_id"`
		StatusURL string `json:"status_url"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &sub) != nil || sub.RequestID == "" {
		t.Fatalf("submit: %d %s", resp.StatusCode, body)
	}
	if !strings.HasPrefix(sub.StatusURL, "https://queue.fal.run/") {
		t.Errorf("status_url %q: the upstream should see the canonical Host", sub.StatusURL)
	}
	base := "https://queue.fal.run/fal-ai/flux/requests/" + sub.RequestID
	h.eventually("COMPLETED", func() bool {
		resp, body := h.proxy("GET", base+"/status?logs=1", "", nil)
		return resp.StatusCode == 200 && bytes.Contains(body, []byte("COMPLETED"))
	})
	if resp, body := h.proxy("GET", base, "", nil); resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"prompt":"x"`)) {
		t.Fatalf("result: %d %s", resp.StatusCode, body)
	}
	if resp, _ := h.proxy("PUT", base+"/cancel", "", nil); resp.StatusCode != 400 {
		t.Fatalf("cancel after completion: %d, want fal's 400", resp.StatusCode)
	}
	resp, body = h.proxy("POST", "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3", `{"content_type":"image/png","file_name":"a.png"}`, nil)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("upload_url")) {
		t.Fatalf("storage initiate: %d %s", resp.StatusCode, body)
	}
}

func TestProxyRefusalsNeverReachFal(t *testing.T) {
	h := start(t, withPolicy(`{"version":1,"allowedApps":["fal-ai/flux/*"],"maxRequestBytes":1024}`))
	for _, tc := range []struct {
		name, target, body string
		hdr                map[string]string
		status             int
		code               string
	}{
		{"missing target", "", "{}", nil, 400, "target_missing"},
		{"look-alike", "https://fal.run.evil.com/fal-ai/flux/dev", "{}", nil, 400, "target_not_allowed"},
		{"userinfo trick", "https://fal.run@evil.com/fal-ai/flux/dev", "{}", nil, 400, "target_not_allowed"},
		{"not a url", "not a url", "{}", nil, 400, "target_invalid"},
		{"app outside policy", "https://fal.run/fal-ai/fast-sdxl", "{}", nil, 400, "app_not_allowed"},
		{"keys api", "https://api.fal.ai/v1/keys", "{}", nil, 400, "target_not_allowed"},
		{"too large", "https://fal.run/fal-ai/flux/dev", strings.Repeat("x", 2048), nil, 413, "body_too_large"},
		{"origin not allowed", "https://fal.run/fal-ai/flux/dev", "{}", map[string]string{"Origin": "https://evil.example"}, 403, "origin_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := h.proxy("POST", tc.target, tc.body, tc.hdr)
			if _, code := apiError(t, body); resp.StatusCode != tc.status || code != tc.code {
				t.Fatalf("got %d %s, want %d %s", resp.StatusCode, body, tc.status, tc.code)
			}
		})
	}
	// A body without Content-Length is capped too.
	req, _ := http.NewRequest("POST", h.base+"/api/fal/proxy", io.MultiReader(strings.NewReader(strings.Repeat("y", 4096))))
	req.ContentLength = -1
	req.Header.Set("x-fal-target-url", "https://fal.run/fal-ai/flux/dev")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("chunked oversize: %d %s", resp.StatusCode, b)
	}
	for _, c := range h.fal.Calls() {
		if c.Status != 0 {
			t.Fatalf("a refused request reached fal: %+v", c)
		}
	}
	if len(h.fal.Calls()) > 1 {
		t.Fatalf("fal saw %d calls", len(h.fal.Calls()))
	}
}

func TestNonLoopbackHostRefused(t *testing.T) {
	h := start(t)
	for _, host := range []string{"evil.example.com", "evil.example.com:4750", "10.0.0.1:4750", "127.0.0.1.nip.io"} {
		req, _ := http.NewRequest("GET", h.base+"/api/fal/token?app=fal-ai/flux/dev", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if _, code := apiError(t, b); resp.StatusCode != 403 || code != "host_not_loopback" {
			t.Errorf("Host %s: %d %s", host, resp.StatusCode, b)
		}
	}
	for _, host := range []string{"localhost:4750", "127.0.0.1", "[::1]:4750"} {
		req, _ := http.NewRequest("GET", h.base+"/api/fal/token?app=fal-ai/flux/dev", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("Host %s refused: %d", host, resp.StatusCode)
		}
	}
	if n := h.fal.CountCalls("rest.fal.ai", "/tokens/"); n != 1 {
		t.Errorf("%d token mints, want 1", n)
	}
}

func TestRateLimit(t *testing.T) {
	h := start(t, withPolicy(`{"version":1,"allowedApps":["fal-ai/flux/*"],"rateLimit":{"requestsPerSecond":0.5,"burst":2}}`))
	var codes []int
	for i := 0; i < 3; i++ {
		resp, _ := h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", nil)
		codes = append(codes, resp.StatusCode)
		if resp.StatusCode == 429 && resp.Header.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	if fmt.Sprint(codes) != "[200 200 429]" {
		t.Fatalf("codes %v", codes)
	}
	// A new realtime session is a request to fal too.
	if _, resp, err := h.dialRelay("/realtime/fal-ai/flux/dev"); err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("relay over the rate limit: %v %v", err, resp)
	}
	// Tokens served from the cache do not count against the limit.
	for i := 0; i < 5; i++ {
		if st := h.status(h.base + "/api/fal/token?app=fal-ai/flux/dev"); st != 200 {
			t.Fatalf("token request %d: %d", i, st)
		}
	}
	if v := h.metric("falguard_sidecar_rate_limited_requests_total"); v != 2 {
		t.Fatalf("rate_limited metric %v", v)
	}
}

func TestTokenEndpointsAndCache(t *testing.T) {
	h := start(t)
	// fal-js realtime.connect with proxyUrl: POST rest.fal.ai/tokens/ through the proxy.
	resp, body := h.proxy("POST", "https://rest.fal.ai/tokens/", `{"allowed_apps":["fast-lcm-diffusion"],"token_expiration":120}`, nil)
	var tok string
	if resp.StatusCode != 200 || json.Unmarshal(body, &tok) != nil || strings.Count(tok, ".") != 2 {
		t.Fatalf("proxied token: %d %s", resp.StatusCode, body)
	}
	resp, body = h.proxy("POST", "https://rest.alpha.fal.ai/tokens/", `{"allowed_apps":["fast-lcm-diffusion"],"token_expiration":120}`, nil)
	var tok2 string
	if resp.StatusCode != 200 || json.Unmarshal(body, &tok2) != nil || tok2 != tok {
		t.Fatalf("second proxied token not from the cache: %d %s", resp.StatusCode, body)
	}
	resp, body = h.proxy("POST", "https://rest.fal.ai/tokens/", `{"allowed_apps":["fast-sdxl"],"token_expiration":120}`, nil)
	if _, code := apiError(t, body); resp.StatusCode != 400 || code != "app_not_allowed" {
		t.Fatalf("disallowed alias: %d %s", resp.StatusCode, body)
	}

	// tokenProvider shape, many concurrent callers, one upstream call.
	var wg sync.WaitGroup
	errs := make(chan string, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(h.base + "/api/fal/token?app=fal-ai/flux/dev/image-to-image/realtime")
			if err != nil {
				errs <- err.Error()
				return
			}
			defer resp.Body.Close()
			var tr struct{ Token, ExpiresAt, App string }
			var raw map[string]string
			b, _ := io.ReadAll(resp.Body)
			_ = json.Unmarshal(b, &raw)
			tr.Token, tr.ExpiresAt, tr.App = raw["token"], raw["expires_at"], raw["app"]
			exp, perr := time.Parse(time.RFC3339, tr.ExpiresAt)
			if resp.StatusCode != 200 || tr.Token == "" || perr != nil || time.Until(exp) < time.Minute || tr.App != "fal-ai/flux/dev/image-to-image/realtime" {
				errs <- fmt.Sprintf("%d %s", resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if n := h.fal.CountCalls("rest.fal.ai", "/tokens/"); n != 2 {
		t.Fatalf("%d token mints, want 2 (one per alias)", n)
	}
	for _, tc := range []struct {
		app    string
		status int
		code   string
	}{
		{"fal-ai/fast-sdxl", 403, "app_not_allowed"},
		{"", 400, "bad_request"},
		{"fal-ai/../x", 400, "bad_request"},
	} {
		resp, err := client.Get(h.base + "/api/fal/token?app=" + tc.app)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if _, code := apiError(t, b); resp.StatusCode != tc.status || code != tc.code {
			t.Errorf("app %q: %d %s", tc.app, resp.StatusCode, b)
		}
	}
	hits, misses := h.metric("falguard_sidecar_token_cache_hits_total"), h.metric("falguard_sidecar_token_cache_misses_total")
	if hits+misses < 202 || hits < 1 || h.metric("falguard_sidecar_token_cache_refreshes_total") != 2 {
		t.Errorf("token metrics: hits %v misses %v refreshes %v", hits, misses, h.metric("falguard_sidecar_token_cache_refreshes_total"))
	}
}

func TestCORS(t *testing.T) {
	h := start(t)
	req, _ := http.NewRequest("OPTIONS", h.base+"/api/fal/proxy", nil)
	req.Header.Set("Origin", "https://app.example.com")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "x-fal-target-url, content-type")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "x-fal-target-url") {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = h.proxy("POST", "https://fal.run/fal-ai/flux/dev", "{}", map[string]string{"Origin": "https://app.example.com"})
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" || !strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "x-fal-request-id") {
		t.Fatalf("CORS headers missing: %v", resp.Header)
	}
	req.Header.Set("Origin", "https://evil.example")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight from a foreign origin: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestListenRefusesNonLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		allow bool
		ok    bool
	}{
		{"127.0.0.1:4750", false, true},
		{"localhost:4750", false, true},
		{"[::1]:4750", false, true},
		{":4750", false, false},
		{"0.0.0.0:4750", false, false},
		{"10.1.2.3:4750", false, false},
		{"0.0.0.0:4750", true, true},
	} {
		err := server.CheckListen(tc.addr, tc.allow)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, %v) = %v", tc.addr, tc.allow, err)
		}
		if err != nil && !strings.Contains(err.Error(), "--allow-non-loopback") {
			t.Errorf("error does not name the fix: %v", err)
		}
	}
}
