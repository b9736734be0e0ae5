// Package ops serves the sidecar's probe and metrics listener: /livez,
// /readyz, /startupz, /metrics and a loopback-only POST /quitquitquit. No
// credential ever touches it.
package ops

import (
	"fmt"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/falguard/falguard/sidecar/apierr"
)

// State is what the probes report. The zero value is "starting".
type State struct {
	started  atomic.Bool // key and policy loaded
	draining atomic.Bool
	atCap    func() bool
}

// NewState returns a State; atCap reports the connection cap being reached.
func NewState(atCap func() bool) *State { return &State{atCap: atCap} }

// SetStarted marks key and policy loaded.
func (s *State) SetStarted() { s.started.Store(true) }

// SetDraining marks shutdown begun.
func (s *State) SetDraining() { s.draining.Store(true) }

// Started reports whether key and policy are loaded.
func (s *State) Started() bool { return s.started.Load() }

// Draining reports whether shutdown has begun.
func (s *State) Draining() bool { return s.draining.Load() }

// Ready is false while starting, draining or at the connection cap, never
// because fal is unreachable (that would cascade one outage into many).
func (s *State) Ready() (bool, string) {
	switch {
	case !s.started.Load():
		return false, "starting: key and policy not loaded yet"
	case s.draining.Load():
		return false, "draining: shutting down"
	case s.atCap != nil && s.atCap():
		return false, "at --max-connections"
	}
	return true, "ok"
}

// Handler builds the ops mux. quit is called by POST /quitquitquit from a
// loopback address.
func Handler(s *State, reg *prometheus.Registry, quit func()) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) { text(w, http.StatusOK, "ok") })
	mux.HandleFunc("GET /startupz", func(w http.ResponseWriter, r *http.Request) {
		if !s.Started() {
			text(w, http.StatusServiceUnavailable, "key and policy not loaded yet")
			return
		}
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := s.Ready()
		if !ok {
			text(w, http.StatusServiceUnavailable, why)
			return
		}
		text(w, http.StatusOK, why)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		if !FromLoopback(r) {
			apierr.Write(w, http.StatusForbidden, apierr.CodeHostNotLoopback, "quitquitquit is accepted only from inside the pod (127.0.0.1)")
			return
		}
		quit()
		text(w, http.StatusOK, "shutting down")
	})
	return mux
}

// FromLoopback reports whether the request came from a loopback address.
func FromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func text(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, msg)
}
