package ops

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestProbes(t *testing.T) {
	atCap := false
	s := NewState(func() bool { return atCap })
	quit := 0
	h := Handler(s, prometheus.NewRegistry(), func() { quit++ })
	get := func(method, path, remote string) int {
		r := httptest.NewRequest(method, path, nil)
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	for _, step := range []struct {
		name                    string
		do                      func()
		livez, readyz, startupz int
	}{
		{"starting", func() {}, 200, 503, 503},
		{"loaded", s.SetStarted, 200, 200, 200},
		{"at cap", func() { atCap = true }, 200, 503, 200},
		{"below cap", func() { atCap = false }, 200, 200, 200},
		{"draining", s.SetDraining, 200, 503, 200},
	} {
		step.do()
		if l, r, st := get("GET", "/livez", "127.0.0.1:1"), get("GET", "/readyz", "127.0.0.1:1"), get("GET", "/startupz", "127.0.0.1:1"); l != step.livez || r != step.readyz || st != step.startupz {
			t.Errorf("%s: livez %d readyz %d startupz %d", step.name, l, r, st)
		}
	}
	if c := get("POST", "/quitquitquit", "10.1.2.3:5555"); c != http.StatusForbidden || quit != 0 {
		t.Fatalf("quit from the pod network: %d", c)
	}
	if c := get("POST", "/quitquitquit", "127.0.0.1:5555"); c != 200 || quit != 1 {
		t.Fatalf("quit from loopback: %d", c)
	}
	if c := get("GET", "/quitquitquit", "127.0.0.1:5555"); c != http.StatusMethodNotAllowed {
		t.Fatalf("GET quit: %d", c)
	}
}
