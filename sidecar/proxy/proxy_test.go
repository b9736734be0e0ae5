package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/falguard/falguard/sidecar/credentials"
	"github.com/falguard/falguard/sidecar/metrics"
	"github.com/falguard/falguard/sidecar/policy"
)

func TestCapped(t *testing.T) {
	for _, tc := range []struct {
		body    string
		limit   int64
		wantErr bool
	}{
		{"", 0, false},
		{"abc", 3, false},
		{"abcd", 3, true},
		{strings.Repeat("x", 100000), 99999, true},
		{strings.Repeat("x", 100000), 100000, false},
	} {
		c := &capped{r: strings.NewReader(tc.body), left: tc.limit}
		b, err := io.ReadAll(c)
		if tc.wantErr != errors.Is(err, errCapExceeded) || (!tc.wantErr && string(b) != tc.body) {
			t.Errorf("%d bytes, limit %d: %d read, err %v", len(tc.body), tc.limit, len(b), err)
		}
	}
}

func TestCORS(t *testing.T) {
	pol := &policy.Policy{CORS: policy.CORS{AllowedOrigins: []string{"https://app.example.com"}}}
	for _, tc := range []struct {
		name, method, origin, reqMethod string
		cont                            bool
		status                          int
		allowOrigin                     string
	}{
		{"no origin", "POST", "", "", true, 0, ""},
		{"allowed", "POST", "https://app.example.com", "", true, 0, "https://app.example.com"},
		{"preflight", "OPTIONS", "https://app.example.com", "POST", false, 204, "https://app.example.com"},
		{"foreign", "POST", "https://evil.example", "", false, 403, ""},
		{"foreign preflight", "OPTIONS", "https://evil.example", "POST", false, 403, ""},
		{"look-alike", "POST", "https://app.example.com.evil.example", "", false, 403, ""},
		{"plain OPTIONS", "OPTIONS", "https://app.example.com", "", true, 0, "https://app.example.com"},
	} {
		r := httptest.NewRequest(tc.method, "/api/fal/proxy", nil)
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		if tc.reqMethod != "" {
			r.Header.Set("Access-Control-Request-Method", tc.reqMethod)
		}
		w := httptest.NewRecorder()
		cont := cors(w, r, pol)
		if cont != tc.cont || (!cont && w.Code != tc.status) || w.Header().Get("Access-Control-Allow-Origin") != tc.allowOrigin {
			t.Errorf("%s: continue %v, status %d, allow-origin %q", tc.name, cont, w.Code, w.Header().Get("Access-Control-Allow-Origin"))
		}
	}
}

func TestRateLimit(t *testing.T) {
	pol := &policy.Policy{AllowedApps: []string{"a/b"}, RateLimit: policy.RateLimit{RequestsPerSecond: 0.1, Burst: 1}}
	pol.Default()
	snap, err := credentials.NewSnapshot("kid:secret", pol)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New("test")
	if w := httptest.NewRecorder(); !RateLimit(w, snap, m) {
		t.Fatal("first request limited")
	}
	w := httptest.NewRecorder()
	if RateLimit(w, snap, m) || w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "10" {
		t.Fatalf("second request: %d, Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	unlimited, _ := credentials.NewSnapshot("kid:secret", &policy.Policy{AllowedApps: []string{"a/b"}})
	for i := 0; i < 100; i++ {
		if !RateLimit(httptest.NewRecorder(), unlimited, m) {
			t.Fatal("no rate limit configured, yet limited")
		}
	}
}
