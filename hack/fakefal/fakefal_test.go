package fakefal

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/vmihailenco/msgpack/v5"
)

const (
	apiKey   = "kid:ksecret"
	apiKey2  = "kid2:ksecret2"
	adminKey = "adm:asecret"
)

type fixture struct {
	t   *testing.T
	srv *Server
	hc  *http.Client
	tls *tls.Config
}

func newFixture(t *testing.T, opts ...func(*Options)) *fixture {
	t.Helper()
	o := Options{Keys: []string{apiKey, apiKey2}, AdminKeys: []string{adminKey}}
	for _, f := range opts {
		f(&o)
	}
	srv, err := Start(o)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(srv.CAPEM()) {
		t.Fatal("CAPEM is not a PEM certificate")
	}
	tc := &tls.Config{RootCAs: pool}
	return &fixture{t: t, srv: srv, tls: tc, hc: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tc},
	}}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", r.body, err)
	}
	return m
}

// do sends a request to host; authz is the full Authorization value.
func (f *fixture) do(method, host, path, authz string, body any, hdr ...string) resp {
	f.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, f.srv.URL(host)+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "host") {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := f.hc.Do(req)
	if err != nil {
		f.t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		f.t.Fatalf("reading body: %v", err)
	}
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

func (f *fixture) token(key string, apps []string, ttl int) string {
	f.t.Helper()
	r := f.do("POST", HostRest, "/tokens/", "Key "+key, map[string]any{"allowed_apps": apps, "token_expiration": ttl})
	if r.status != 200 {
		f.t.Fatalf("POST /tokens/: %d %s", r.status, r.body)
	}
	var tok string
	if err := json.Unmarshal(r.body, &tok); err != nil {
		f.t.Fatalf("token answer %q is not a JSON string: %v", r.body, err)
	}
	return tok
}

func TestTLSAndOverrides(t *testing.T) {
	f := newFixture(t)
	if len(f.srv.Overrides()) != len(Hosts) {
		t.Fatalf("Overrides() = %v, want one per host", f.srv.Overrides())
	}
	for i, h := range Hosts {
		want := "https://" + h + "=" + f.srv.URL(h)
		if f.srv.Overrides()[i] != want {
			t.Errorf("Overrides()[%d] = %q, want %q", i, f.srv.Overrides()[i], want)
		}
		u, err := url.Parse(f.srv.URL(h))
		if err != nil || u.Scheme != "https" || !strings.HasPrefix(u.Host, "127.0.0.1:") {
			t.Errorf("URL(%q) = %q, want https://127.0.0.1:<port>", h, f.srv.URL(h))
		}
		// The certificate must verify under the canonical name and localhost too.
		for _, name := range []string{h, "localhost", "127.0.0.1"} {
			cfg := f.tls.Clone()
			cfg.ServerName = name
			conn, err := tls.Dial("tcp", u.Host, cfg)
			if err != nil {
				t.Errorf("TLS to %s as %q: %v", h, name, err)
				continue
			}
			conn.Close()
		}
	}
	if _, err := tls.Dial("tcp", strings.TrimPrefix(f.srv.URL(HostRun), "https://"), &tls.Config{}); err == nil {
		t.Error("a client without fakefal's CA connected; want a verification error")
	}
}

func TestMaxCallsKeepsTheNewest(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxCalls = 4 })
	for i := 0; i < 7; i++ {
		f.do("GET", HostRun, fmt.Sprintf("/fal-ai/flux/%d", i), "Key "+apiKey, nil)
	}
	calls := f.srv.Calls()
	if len(calls) > 4 || calls[len(calls)-1].Path != "/fal-ai/flux/6" {
		t.Fatalf("Calls() = %+v, want at most 4 ending with the newest", calls)
	}
}

func TestTokens(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.TokenTTLMax = 10 * time.Minute })
	tests := []struct {
		name, host, authz string
		body              any
		wantStatus        int
		wantTTL           time.Duration
		wantKeyID         string
	}{
		{"valid key", HostRest, "Key " + apiKey, map[string]any{"allowed_apps": []string{"lcm"}, "token_expiration": 120}, 200, 120 * time.Second, "kid"},
		{"alpha host", HostRestAlpha, "Key " + apiKey2, map[string]any{"allowed_apps": []string{"lcm"}, "token_expiration": 60}, 200, 60 * time.Second, "kid2"},
		{"admin key is an API key", HostRest, "Key " + adminKey, map[string]any{"allowed_apps": []string{"lcm"}}, 200, DefaultTokenTTL, "adm"},
		{"ttl clamped", HostRest, "Key " + apiKey, map[string]any{"allowed_apps": []string{"lcm"}, "token_expiration": 7200}, 200, 10 * time.Minute, "kid"},
		{"wrong secret", HostRest, "Key kid:nope", map[string]any{"allowed_apps": []string{"lcm"}}, 401, 0, ""},
		{"unknown key", HostRest, "Key who:ever", map[string]any{"allowed_apps": []string{"lcm"}}, 401, 0, ""},
		{"no auth", HostRest, "", map[string]any{"allowed_apps": []string{"lcm"}}, 401, 0, ""},
		{"bearer not accepted", HostRest, "Bearer x", map[string]any{"allowed_apps": []string{"lcm"}}, 401, 0, ""},
		{"no apps", HostRest, "Key " + apiKey, map[string]any{"token_expiration": 60}, 422, 0, "kid"},
		{"zero ttl", HostRest, "Key " + apiKey, map[string]any{"allowed_apps": []string{"lcm"}, "token_expiration": 0}, 422, 0, "kid"},
		{"not json", HostRest, "Key " + apiKey, "{", 422, 0, "kid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.srv.ResetCalls()
			r := f.do("POST", tt.host, "/tokens/", tt.authz, tt.body)
			if r.status != tt.wantStatus {
				t.Fatalf("status %d (%s), want %d", r.status, r.body, tt.wantStatus)
			}
			if calls := f.srv.Calls(); len(calls) != 1 || calls[0].KeyID != tt.wantKeyID || calls[0].Host != tt.host || calls[0].Status != tt.wantStatus {
				t.Errorf("Calls() = %+v, want one call on %s by %q with %d", calls, tt.host, tt.wantKeyID, tt.wantStatus)
			}
			if tt.wantStatus != 200 {
				if _, ok := r.json(t)["detail"]; !ok {
					t.Errorf("error body %s has no detail", r.body)
				}
				return
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var tok string
			if err := json.Unmarshal(r.body, &tok); err != nil {
				t.Fatalf("answer %s is not a bare JSON string: %v", r.body, err)
			}
			claims := &tokenClaims{}
			if _, err := jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return f.srv.jwtKey, nil }); err != nil {
				t.Fatalf("token does not verify: %v", err)
			}
			if got := claims.ExpiresAt.Sub(claims.IssuedAt.Time); got != tt.wantTTL {
				t.Errorf("exp-iat = %v, want %v", got, tt.wantTTL)
			}
			if claims.KeyID != tt.wantKeyID || len(claims.AllowedApps) != 1 || claims.AllowedApps[0] != "lcm" {
				t.Errorf("claims %+v, want key %q apps [lcm]", claims, tt.wantKeyID)
			}
		})
	}
}

func TestRun(t *testing.T) {
	f := newFixture(t)
	tok := f.token(apiKey2, []string{"flux"}, 60)
	tests := []struct {
		name, method, path, authz string
		body                      any
		wantStatus                int
		wantKeyID                 string
		check                     func(t *testing.T, r resp)
	}{
		{"echo", "POST", "/fal-ai/flux/dev", "Key " + apiKey, map[string]any{"prompt": "a cat"}, 200, "kid", func(t *testing.T, r resp) {
			m := r.json(t)
			if m["prompt"] != "a cat" || m["request_id"] != r.header.Get("x-fal-request-id") || m["request_id"] == "" {
				t.Errorf("body %v, header id %q: want the input echoed with the request id", m, r.header.Get("x-fal-request-id"))
			}
		}},
		{"get input from query", "GET", "/fal-ai/flux?prompt=dog", "Key " + apiKey, nil, 200, "kid", func(t *testing.T, r resp) {
			if r.json(t)["prompt"] != "dog" {
				t.Errorf("body %s, want prompt dog", r.body)
			}
		}},
		{"binary bytes exact", "POST", "/fal-ai/flux", "Key " + apiKey, map[string]any{"binary_bytes": 70000}, 200, "kid", func(t *testing.T, r resp) {
			if !bytes.Equal(r.body, BinaryBody(70000)) || r.header.Get("Content-Type") != "application/octet-stream" {
				t.Errorf("got %d bytes %q, want BinaryBody(70000) as octet-stream", len(r.body), r.header.Get("Content-Type"))
			}
		}},
		{"fail 422", "POST", "/fal-ai/flux", "Key " + apiKey, map[string]any{"fail_status": 422}, 422, "kid", func(t *testing.T, r resp) {
			if d, ok := r.json(t)["detail"].([]any); !ok || len(d) == 0 {
				t.Errorf("422 body %s, want a FastAPI detail list", r.body)
			}
		}},
		{"fail 429", "POST", "/fal-ai/flux", "Key " + apiKey, map[string]any{"fail_status": 429}, 429, "kid", func(t *testing.T, r resp) {
			if r.header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		}},
		{"fail 504 user timeout", "POST", "/fal-ai/flux", "Key " + apiKey, map[string]any{"fail_status": 504}, 504, "kid", func(t *testing.T, r resp) {
			if r.header.Get("x-fal-request-timeout-type") != "user" {
				t.Error("504 without x-fal-request-timeout-type: user")
			}
		}},
		{"jwt bearer for allowed app", "POST", "/fal-ai/flux", "Bearer " + tok, map[string]any{}, 200, "kid2", nil},
		{"jwt query for allowed app", "POST", "/fal-ai/flux/stream?fal_jwt_token=" + tok, "", map[string]any{"num_events": 1}, 200, "kid2", nil},
		{"jwt for another app", "POST", "/fal-ai/lcm", "Bearer " + tok, map[string]any{}, 403, "kid2", nil},
		{"bad key", "POST", "/fal-ai/flux", "Key kid:bad", map[string]any{}, 401, "", nil},
		{"no app", "POST", "/onlyowner", "Key " + apiKey, map[string]any{}, 404, "kid", nil},
		{"invalid json", "POST", "/fal-ai/flux", "Key " + apiKey, "{x", 422, "kid", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.srv.ResetCalls()
			r := f.do(tt.method, HostRun, tt.path, tt.authz, tt.body)
			if r.status != tt.wantStatus {
				t.Fatalf("status %d (%s), want %d", r.status, r.body, tt.wantStatus)
			}
			c := f.srv.Calls()
			if len(c) != 1 || c[0].KeyID != tt.wantKeyID || c[0].Status != tt.wantStatus {
				t.Fatalf("Calls() = %+v, want one call by %q answered %d", c, tt.wantKeyID, tt.wantStatus)
			}
			if c[0].Header.Get("Authorization") != "" || c[0].Header.Get("Content-Type") != "application/json" {
				t.Errorf("recorded header %v: want the request's headers without Authorization", c[0].Header)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

// sseData returns the data: payloads of an SSE body.
func sseData(t *testing.T, body []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var m map[string]any
			if err := json.Unmarshal([]byte(d), &m); err != nil {
				t.Fatalf("SSE data %q: %v", d, err)
			}
			out = append(out, m)
		}
	}
	return out
}

func TestParseApp(t *testing.T) {
	tests := []struct {
		path string
		want appRef
		ok   bool
	}{
		{"/fal-ai/flux", appRef{owner: "fal-ai", alias: "flux"}, true},
		{"/fal-ai/fast-lcm-diffusion/image-to-image/realtime", appRef{owner: "fal-ai", alias: "fast-lcm-diffusion", path: "image-to-image/realtime"}, true},
		{"/workflows/me/flow/stream", appRef{namespace: "workflows", owner: "me", alias: "flow", path: "stream"}, true},
		{"/comfy/me/graph", appRef{namespace: "comfy", owner: "me", alias: "graph"}, true},
		{"/fal-ai", appRef{}, false},
		{"/workflows/me", appRef{}, false},
		{"/", appRef{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, ok := parseApp(tt.path)
			if ok != tt.ok || (ok && got != tt.want) {
				t.Errorf("parseApp(%q) = %+v, %v; want %+v, %v", tt.path, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestStream(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name  string
		input map[string]any
		want  int
	}{
		{"default", map[string]any{"prompt": "x"}, defaultNumEvents},
		{"five", map[string]any{"num_events": 5}, 5},
		{"none", map[string]any{"num_events": 0}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do("POST", HostRun, "/fal-ai/flux/stream", "Key "+apiKey, tt.input)
			if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("status %d content-type %q, want 200 text/event-stream", r.status, r.header.Get("Content-Type"))
			}
			ev := sseData(t, r.body)
			if len(ev) != tt.want {
				t.Fatalf("%d events, want %d: %s", len(ev), tt.want, r.body)
			}
			for i, e := range ev {
				if int(e["index"].(float64)) != i || e["done"] != (i == tt.want-1) || e["request_id"] != r.header.Get("x-fal-request-id") {
					t.Errorf("event %d = %v", i, e)
				}
			}
		})
	}
}

func TestQueue(t *testing.T) {
	f := newFixture(t)
	auth := "Key " + apiKey
	submit := func(t *testing.T, input map[string]any, hdr ...string) map[string]any {
		t.Helper()
		r := f.do("POST", HostQueue, "/fal-ai/flux/dev", auth, input, hdr...)
		if r.status != 200 {
			t.Fatalf("submit: %d %s", r.status, r.body)
		}
		return r.json(t)
	}

	t.Run("urls follow the Host header", func(t *testing.T) {
		direct := submit(t, map[string]any{})
		id := direct["request_id"].(string)
		if want := f.srv.URL(HostQueue) + "/fal-ai/flux/requests/" + id + "/status"; direct["status_url"] != want {
			t.Errorf("status_url %v, want %s", direct["status_url"], want)
		}
		proxied := submit(t, map[string]any{}, "Host", "queue.fal.run")
		id = proxied["request_id"].(string)
		for k, suffix := range map[string]string{"status_url": "/status", "response_url": "", "cancel_url": "/cancel"} {
			if want := "https://queue.fal.run/fal-ai/flux/requests/" + id + suffix; proxied[k] != want {
				t.Errorf("%s = %v, want %s", k, proxied[k], want)
			}
		}
	})

	t.Run("status progresses then result", func(t *testing.T) {
		id := submit(t, map[string]any{"prompt": "p", "queue_polls": 2})["request_id"].(string)
		base := "/fal-ai/flux/requests/" + id
		if r := f.do("GET", HostQueue, base, auth, nil); r.status != 400 {
			t.Errorf("result before completion: %d, want 400", r.status)
		}
		steps := []struct {
			state string
			code  int
		}{{"IN_QUEUE", 202}, {"IN_PROGRESS", 202}, {"COMPLETED", 200}, {"COMPLETED", 200}}
		for i, st := range steps {
			r := f.do("GET", HostQueue, base+"/status?logs=1", auth, nil)
			m := r.json(t)
			if r.status != st.code || m["status"] != st.state {
				t.Fatalf("poll %d: %d %v, want %d %s", i, r.status, m["status"], st.code, st.state)
			}
			if _, ok := m["logs"].([]any); !ok {
				t.Errorf("poll %d: logs=1 but logs = %v", i, m["logs"])
			}
		}
		if m := f.do("GET", HostQueue, base+"/status", auth, nil).json(t); m["logs"] != nil {
			t.Errorf("logs without logs=1: %v", m["logs"])
		}
		r := f.do("GET", HostQueue, base, auth, nil)
		if m := r.json(t); r.status != 200 || m["prompt"] != "p" || m["request_id"] != id || r.header.Get("x-fal-request-id") != id {
			t.Errorf("result %d %v, want the echo with request id %s", r.status, m, id)
		}
		if r := f.do("PUT", HostQueue, base+"/cancel", auth, nil); r.status != 400 || r.json(t)["status"] != "ALREADY_COMPLETED" {
			t.Errorf("cancel after completion: %d %s", r.status, r.body)
		}
	})

	t.Run("status stream", func(t *testing.T) {
		id := submit(t, map[string]any{"queue_polls": 2})["request_id"].(string)
		r := f.do("GET", HostQueue, "/fal-ai/flux/requests/"+id+"/status/stream", auth, nil)
		ev := sseData(t, r.body)
		var states []string
		for _, e := range ev {
			states = append(states, e["status"].(string))
		}
		if strings.Join(states, ",") != "IN_QUEUE,IN_PROGRESS,COMPLETED" {
			t.Errorf("states %v, want IN_QUEUE,IN_PROGRESS,COMPLETED", states)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		id := submit(t, map[string]any{})["request_id"].(string)
		base := "/fal-ai/flux/requests/" + id
		if r := f.do("PUT", HostQueue, base+"/cancel", auth, nil); r.status != 202 || r.json(t)["status"] != "CANCELLATION_REQUESTED" {
			t.Errorf("cancel: %d %s", r.status, r.body)
		}
		if r := f.do("GET", HostQueue, base, auth, nil); r.status != 400 {
			t.Errorf("result of a cancelled request: %d, want 400", r.status)
		}
		if r := f.do("PUT", HostQueue, "/fal-ai/flux/requests/nope/cancel", auth, nil); r.status != 404 || r.json(t)["status"] != "NOT_FOUND" {
			t.Errorf("cancel unknown: %d %s", r.status, r.body)
		}
		if r := f.do("GET", HostQueue, "/fal-ai/other/requests/"+id+"/status", auth, nil); r.status != 404 {
			t.Errorf("status under another app: %d, want 404", r.status)
		}
	})

	t.Run("result failure status and auth", func(t *testing.T) {
		id := submit(t, map[string]any{"fail_status": 422, "queue_polls": 0})["request_id"].(string)
		if r := f.do("GET", HostQueue, "/fal-ai/flux/requests/"+id, auth, nil); r.status != 422 {
			t.Errorf("result: %d, want 422", r.status)
		}
		if r := f.do("POST", HostQueue, "/fal-ai/flux", "Key kid:bad", map[string]any{}); r.status != 401 {
			t.Errorf("submit with a bad key: %d, want 401", r.status)
		}
	})
}

func (f *fixture) dialWS(path string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{TLSClientConfig: f.tls, HandshakeTimeout: 5 * time.Second}
	u := strings.Replace(f.srv.URL(HostRun), "https://", "wss://", 1) + path
	return d.Dial(u, hdr)
}

func TestRealtimeAuth(t *testing.T) {
	f := newFixture(t)
	good := f.token(apiKey, []string{"fast-lcm-diffusion"}, 120)
	expired, _ := f.srv.MintToken("kid", []string{"fast-lcm-diffusion"}, -time.Minute)
	revokable := f.token(apiKey2, []string{"fast-lcm-diffusion"}, 120)
	f.srv.RevokeKey("kid2")
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, tokenClaims{AllowedApps: []string{"fast-lcm-diffusion"}, KeyID: "kid",
		RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}}).SignedString([]byte("other"))
	const app = "/fal-ai/fast-lcm-diffusion/image-to-image/realtime"
	tests := []struct {
		name       string
		query      string
		hdr        http.Header
		wantStatus int
		wantKeyID  string
	}{
		{"jwt", "?fal_jwt_token=" + good, nil, 101, "kid"},
		{"key header", "", http.Header{"Authorization": {"Key " + apiKey}}, 101, "kid"},
		{"no credentials", "", nil, 401, ""},
		{"expired", "?fal_jwt_token=" + expired, nil, 401, ""},
		{"forged", "?fal_jwt_token=" + forged, nil, 401, ""},
		{"minted by revoked key", "?fal_jwt_token=" + revokable, nil, 401, ""},
		{"revoked key header", "", http.Header{"Authorization": {"Key " + apiKey2}}, 401, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.srv.ResetCalls()
			conn, res, err := f.dialWS(app+tt.query, tt.hdr)
			if tt.wantStatus == 101 {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				conn.Close()
			} else if !errors.Is(err, websocket.ErrBadHandshake) || res.StatusCode != tt.wantStatus {
				t.Fatalf("dial: %v (response %v), want a %d before the upgrade", err, res, tt.wantStatus)
			}
			if c := f.srv.Calls(); len(c) != 1 || c[0].KeyID != tt.wantKeyID || c[0].Status != tt.wantStatus {
				t.Errorf("Calls() = %+v, want one call by %q answered %d", c, tt.wantKeyID, tt.wantStatus)
			}
		})
	}
	t.Run("app not in token", func(t *testing.T) {
		_, res, err := f.dialWS("/fal-ai/flux/realtime?fal_jwt_token="+good, nil)
		if err == nil || res.StatusCode != 403 {
			t.Fatalf("dial: %v %v, want 403", err, res)
		}
	})
}

func TestRealtimeEcho(t *testing.T) {
	f := newFixture(t)
	conn, _, err := f.dialWS("/fal-ai/fast-lcm-diffusion/realtime", http.Header{"Authorization": {"Key " + apiKey}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))

	t.Run("msgpack", func(t *testing.T) {
		in, _ := msgpack.Marshal(map[string]any{"prompt": "cat", "image": []byte{1, 2, 3}, "request_id": "r1"})
		if err := conn.WriteMessage(websocket.BinaryMessage, in); err != nil {
			t.Fatal(err)
		}
		mt, data, err := conn.ReadMessage()
		if err != nil || mt != websocket.BinaryMessage {
			t.Fatalf("read: type %d err %v, want a binary frame", mt, err)
		}
		var out map[string]any
		if err := msgpack.Unmarshal(data, &out); err != nil {
			t.Fatalf("answer is not msgpack: %v", err)
		}
		imgs, _ := out["images"].([]any)
		if out["prompt"] != "cat" || out["request_id"] != "r1" || !bytes.Equal(out["image"].([]byte), []byte{1, 2, 3}) || len(imgs) != 1 {
			t.Fatalf("answer %v, want the input, its request_id and one image", out)
		}
		if c, _ := imgs[0].(map[string]any)["content"].([]byte); !bytes.HasPrefix(c, []byte{0xff, 0xd8}) {
			t.Errorf("image content %v is not JPEG-shaped bytes", c)
		}
	})
	t.Run("json", func(t *testing.T) {
		if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"prompt":"dog"}`)); err != nil {
			t.Fatal(err)
		}
		mt, data, err := conn.ReadMessage()
		var out map[string]any
		if err != nil || mt != websocket.TextMessage || json.Unmarshal(data, &out) != nil {
			t.Fatalf("read: %d %s %v, want a JSON text frame", mt, data, err)
		}
		if out["prompt"] != "dog" || out["request_id"] == "" {
			t.Errorf("answer %v, want the input and a request_id", out)
		}
	})
	t.Run("error_code", func(t *testing.T) {
		_ = conn.WriteMessage(websocket.TextMessage, []byte(`{"error_code":"BAD_INPUT"}`))
		_, data, _ := conn.ReadMessage()
		var out map[string]any
		_ = json.Unmarshal(data, &out)
		if out["type"] != "x-fal-error" || out["error"] != "BAD_INPUT" || out["reason"] == "" {
			t.Errorf("answer %s, want an x-fal-error frame with BAD_INPUT", data)
		}
	})
	t.Run("ping", func(t *testing.T) {
		got := make(chan string, 1)
		conn.SetPongHandler(func(s string) error { got <- s; return nil })
		if err := conn.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		// A pong is only processed inside a read; trigger one with a message.
		_ = conn.WriteMessage(websocket.TextMessage, []byte(`{}`))
		if _, _, err := conn.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-got:
			if s != "hi" {
				t.Errorf("pong %q, want hi", s)
			}
		default:
			t.Error("no pong")
		}
	})
}

func TestRealtimeFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault Fault
		check func(t *testing.T, conn *websocket.Conn)
	}{
		{"close with code after 2", Fault{CloseAfterMessages: 2, CloseCode: 4003, CloseReason: "bye"}, func(t *testing.T, conn *websocket.Conn) {
			for i := 0; i < 2; i++ {
				_ = conn.WriteMessage(websocket.TextMessage, []byte(`{}`))
				if _, _, err := conn.ReadMessage(); err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
			}
			_, _, err := conn.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != 4003 || ce.Text != "bye" {
				t.Fatalf("got %v, want close 4003 bye", err)
			}
		}},
		{"close right away", Fault{CloseCode: 1011, CloseReason: "down"}, func(t *testing.T, conn *websocket.Conn) {
			_, _, err := conn.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != 1011 {
				t.Fatalf("got %v, want close 1011", err)
			}
		}},
		{"drop after 1", Fault{DropAfterMessages: 1}, func(t *testing.T, conn *websocket.Conn) {
			_ = conn.WriteMessage(websocket.TextMessage, []byte(`{}`))
			if _, _, err := conn.ReadMessage(); err != nil {
				t.Fatalf("first answer: %v", err)
			}
			_, _, err := conn.ReadMessage()
			var ce *websocket.CloseError
			if err == nil || (errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure) {
				t.Fatalf("got %v, want the connection to vanish without a close frame", err)
			}
		}},
		{"error frame after 1", Fault{ErrorFrameAfterMessages: 1}, func(t *testing.T, conn *websocket.Conn) {
			_ = conn.WriteMessage(websocket.TextMessage, []byte(`{}`))
			_, _, _ = conn.ReadMessage()
			_, data, err := conn.ReadMessage()
			if err != nil || !bytes.Contains(data, []byte(`"type":"x-fal-error"`)) {
				t.Fatalf("got %s %v, want an x-fal-error frame", data, err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.srv.SetFault(tt.fault)
			conn, _, err := f.dialWS("/fal-ai/lcm/realtime", http.Header{"Authorization": {"Key " + apiKey}})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer conn.Close()
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			tt.check(t, conn)
		})
	}
}

func TestHTTPFaults(t *testing.T) {
	run := func(f *fixture, key string) int {
		return f.do("POST", HostRun, "/fal-ai/flux", "Key "+key, map[string]any{}).status
	}
	t.Run("status once with retry-after", func(t *testing.T) {
		f := newFixture(t)
		f.srv.SetFault(Fault{Host: HostRun, PathPrefix: "/fal-ai/", Status: 503, RetryAfter: "7", Times: 1})
		r := f.do("POST", HostRun, "/fal-ai/flux", "Key "+apiKey, map[string]any{})
		if r.status != 503 || r.header.Get("Retry-After") != "7" || r.json(t)["detail"] == nil {
			t.Fatalf("got %d %q %s, want 503 with Retry-After 7 and a detail", r.status, r.header.Get("Retry-After"), r.body)
		}
		if got := run(f, apiKey); got != 200 {
			t.Errorf("second call %d, want 200 once Times is used up", got)
		}
		if len(f.srv.Faults()) != 0 {
			t.Errorf("used-up fault still listed: %v", f.srv.Faults())
		}
	})
	t.Run("host and path filters", func(t *testing.T) {
		f := newFixture(t)
		f.srv.SetFault(Fault{Host: HostQueue, Status: 500})
		f.srv.SetFault(Fault{Host: HostRun, PathPrefix: "/other/", Status: 500})
		if got := run(f, apiKey); got != 200 {
			t.Errorf("unmatched request got %d", got)
		}
		if r := f.do("POST", HostQueue, "/fal-ai/flux", "Key "+apiKey, map[string]any{}); r.status != 500 {
			t.Errorf("queue got %d, want 500", r.status)
		}
		f.srv.ClearFaults()
		if r := f.do("POST", HostQueue, "/fal-ai/flux", "Key "+apiKey, map[string]any{}); r.status != 200 {
			t.Errorf("after ClearFaults got %d, want 200", r.status)
		}
	})
	t.Run("refuse key", func(t *testing.T) {
		f := newFixture(t)
		f.srv.SetFault(Fault{RefuseKeyID: "kid"})
		if got := run(f, apiKey); got != 401 {
			t.Errorf("refused key got %d, want 401", got)
		}
		if got := run(f, apiKey2); got != 200 {
			t.Errorf("other key got %d, want 200", got)
		}
		if r := f.do("POST", HostRest, "/tokens/", "Key "+apiKey, map[string]any{"allowed_apps": []string{"x"}}); r.status != 401 {
			t.Errorf("tokens with refused key: %d, want 401", r.status)
		}
	})
	t.Run("drop", func(t *testing.T) {
		f := newFixture(t)
		f.srv.SetFault(Fault{Drop: true, Times: 1})
		req, _ := http.NewRequest("POST", f.srv.URL(HostRun)+"/fal-ai/flux", strings.NewReader("{}"))
		req.Header.Set("Authorization", "Key "+apiKey)
		if res, err := f.hc.Do(req); err == nil {
			res.Body.Close()
			t.Fatalf("got %d, want a transport error", res.StatusCode)
		}
		if c := f.srv.Calls(); len(c) != 1 || c[0].Status != 0 {
			t.Errorf("Calls() = %+v, want one call with status 0", c)
		}
	})
	t.Run("latency", func(t *testing.T) {
		f := newFixture(t)
		f.srv.SetFault(Fault{Latency: 5 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", f.srv.URL(HostRun)+"/fal-ai/flux", strings.NewReader("{}"))
		req.Header.Set("Authorization", "Key "+apiKey)
		if res, err := f.hc.Do(req); err == nil {
			res.Body.Close()
			t.Fatalf("answered %d during a 5s injected latency", res.StatusCode)
		}
	})
}

func TestPlatformKeys(t *testing.T) {
	f := newFixture(t)
	admin := "Key " + adminKey
	for _, tt := range []struct {
		name, authz string
		want        int
	}{{"api key", "Key " + apiKey, 403}, {"bad key", "Key adm:wrong", 401}, {"none", "", 401}} {
		t.Run("refused "+tt.name, func(t *testing.T) {
			if r := f.do("GET", HostAPI, "/v1/keys", tt.authz, nil); r.status != tt.want {
				t.Errorf("GET /v1/keys: %d, want %d", r.status, tt.want)
			}
		})
	}
	if r := f.do("POST", HostAPI, "/v1/keys", admin, map[string]any{"alias": ""}); r.status != 422 {
		t.Errorf("empty alias: %d, want 422", r.status)
	}
	created := f.do("POST", HostAPI, "/v1/keys", admin, map[string]any{"alias": "falguard-rot-1"})
	if created.status != 200 {
		t.Fatalf("create: %d %s", created.status, created.body)
	}
	nk := created.json(t)
	if nk["key"] != nk["key_id"].(string)+":"+nk["key_secret"].(string) {
		t.Fatalf("created %v: key must be key_id:key_secret", nk)
	}
	newKey := nk["key"].(string)
	tok := f.token(newKey, []string{"lcm"}, 60)

	var ids []string
	cursor := ""
	for page := 0; page < 10; page++ {
		q := "/v1/keys?limit=2"
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		m := f.do("GET", HostAPI, q, admin, nil).json(t)
		for _, k := range m["keys"].([]any) {
			km := k.(map[string]any)
			if _, leaked := km["key_secret"]; leaked {
				t.Errorf("list leaks a secret: %v", km)
			}
			ids = append(ids, km["key_id"].(string))
			if km["key_id"] == nk["key_id"] && (km["alias"] != "falguard-rot-1" || km["scope"] != "API") {
				t.Errorf("listed %v, want alias falguard-rot-1 scope API", km)
			}
		}
		if m["has_more"] != true {
			if m["next_cursor"] != nil {
				t.Errorf("last page has next_cursor %v", m["next_cursor"])
			}
			break
		}
		cursor = m["next_cursor"].(string)
	}
	if len(ids) != 4 {
		t.Errorf("paged ids %v, want 4 keys", ids)
	}
	var info KeyInfo
	for _, k := range f.srv.Keys() {
		if k.KeyID == nk["key_id"] {
			info = k
		}
	}
	if !info.CreatedByAPI || info.Alias != "falguard-rot-1" || info.Admin {
		t.Errorf("Keys() entry %+v, want CreatedByAPI, alias, not admin", info)
	}

	if r := f.do("DELETE", HostAPI, "/v1/keys/"+nk["key_id"].(string), admin, nil); r.status != 204 {
		t.Errorf("delete: %d, want 204", r.status)
	}
	if r := f.do("DELETE", HostAPI, "/v1/keys/does-not-exist", admin, nil); r.status != 204 {
		t.Errorf("delete unknown: %d, want 204", r.status)
	}
	if r := f.do("POST", HostRest, "/tokens/", "Key "+newKey, map[string]any{"allowed_apps": []string{"lcm"}}); r.status != 401 {
		t.Errorf("deleted key still mints tokens: %d", r.status)
	}
	if _, res, err := f.dialWS("/fal-ai/lcm/realtime?fal_jwt_token="+tok, nil); err == nil || res.StatusCode != 401 {
		t.Errorf("JWT of a deleted key still connects: %v", err)
	}
}

func TestStorage(t *testing.T) {
	f := newFixture(t)
	auth := "Key " + apiKey
	if r := f.do("POST", HostRest, "/storage/upload/initiate?storage_type=fal-cdn-v3", "", map[string]any{}); r.status != 401 {
		t.Errorf("initiate without auth: %d, want 401", r.status)
	}
	put := func(t *testing.T, u string, method string, body []byte) resp {
		t.Helper()
		req, _ := http.NewRequest(method, u, bytes.NewReader(body))
		req.Header.Set("Content-Type", "image/png")
		res, err := f.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return resp{status: res.StatusCode, header: res.Header, body: b}
	}
	t.Run("single", func(t *testing.T) {
		m := f.do("POST", HostRest, "/storage/upload/initiate?storage_type=fal-cdn-v3", auth, map[string]any{"content_type": "image/png", "file_name": "a.png"}).json(t)
		up, file := m["upload_url"].(string), m["file_url"].(string)
		if !strings.HasPrefix(up, f.srv.URL(HostRest)) {
			t.Fatalf("upload_url %s does not point at fakefal", up)
		}
		data := BinaryBody(1000)
		if r := put(t, up, "PUT", data); r.status != 200 {
			t.Fatalf("PUT upload_url: %d %s", r.status, r.body)
		}
		got, ct, ok := f.srv.UploadedFile(file)
		if !ok || !bytes.Equal(got, data) || ct != "image/png" {
			t.Errorf("UploadedFile: %d bytes %q %v", len(got), ct, ok)
		}
		if r := put(t, file, "GET", nil); !bytes.Equal(r.body, data) {
			t.Errorf("GET file_url: %d bytes", len(r.body))
		}
	})
	t.Run("multipart", func(t *testing.T) {
		m := f.do("POST", HostRestAlpha, "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3", auth, map[string]any{"content_type": "application/octet-stream", "file_name": "b.bin"}).json(t)
		u, _ := url.Parse(m["upload_url"].(string))
		var parts []any
		for i, chunk := range [][]byte{[]byte("hello "), []byte("world")} {
			r := put(t, u.Scheme+"://"+u.Host+u.Path+"/"+string(rune('1'+i))+"?"+u.RawQuery, "PUT", chunk)
			parts = append(parts, r.json(t))
		}
		body, _ := json.Marshal(map[string]any{"parts": parts})
		if r := put(t, u.Scheme+"://"+u.Host+u.Path+"/complete?"+u.RawQuery, "POST", body); r.status != 200 {
			t.Fatalf("complete: %d", r.status)
		}
		if got, _, _ := f.srv.UploadedFile(m["file_url"].(string)); string(got) != "hello world" {
			t.Errorf("multipart upload = %q, want hello world", got)
		}
	})
	t.Run("cdn token", func(t *testing.T) {
		m := f.do("POST", HostRest, "/storage/auth/token?storage_type=fal-cdn-v3", auth, map[string]any{}).json(t)
		for _, k := range []string{"token", "token_type", "base_url", "expires_at"} {
			if m[k] == nil || m[k] == "" {
				t.Errorf("storage token answer %v lacks %s", m, k)
			}
		}
	})
}

func TestControlAPI(t *testing.T) {
	f := newFixture(t)
	ts := httptest.NewServer(f.srv.ControlHandler("http://control"))
	defer ts.Close()
	call := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, b
	}
	tests := []struct {
		name, method, path, body string
		want                     int
		contains                 string
	}{
		{"state", "GET", "/state", "", 200, `"control":"http://control"`},
		{"add key", "POST", "/keys", `{"key":"new:sec","alias":"n"}`, 200, `"key_id":"new"`},
		{"generate key", "POST", "/keys", `{}`, 200, `"key_secret"`},
		{"bad key", "POST", "/keys", `{"key":"nocolon"}`, 400, `key_id:key_secret`},
		{"list keys", "GET", "/keys", "", 200, `"keyID":"new"`},
		{"revoke", "DELETE", "/keys/new", "", 204, ""},
		{"fault", "POST", "/faults", `{"host":"fal.run","status":429,"retryAfter":"2","latency":"1ms","times":1}`, 204, ""},
		{"bad fault", "POST", "/faults", `{"latency":"soon"}`, 400, "duration"},
		{"list faults", "GET", "/faults", "", 200, `"latency":"1ms"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := call(tt.method, tt.path, tt.body)
			if code != tt.want || !strings.Contains(string(body), tt.contains) {
				t.Fatalf("%s %s: %d %s, want %d containing %q", tt.method, tt.path, code, body, tt.want, tt.contains)
			}
		})
	}
	if _, _, ok := f.srv.checkKey("new:sec"); ok {
		t.Error("key revoked through the control API still valid")
	}
	if r := f.do("POST", HostRun, "/fal-ai/x", "Key "+apiKey, map[string]any{}); r.status != 429 || r.header.Get("Retry-After") != "2" {
		t.Errorf("fault from the control API not applied: %d", r.status)
	}
	code, body := call("GET", "/calls?host=fal.run&pathPrefix=/fal-ai/", "")
	var calls []Call
	if err := json.Unmarshal(body, &calls); code != 200 || err != nil || len(calls) != 1 || calls[0].KeyID != "kid" || calls[0].Status != 429 {
		t.Errorf("GET /calls: %d %s", code, body)
	}
	if code, _ := call("DELETE", "/calls", ""); code != 204 || len(f.srv.Calls()) != 0 {
		t.Errorf("DELETE /calls: %d, %d calls left", code, len(f.srv.Calls()))
	}
}
