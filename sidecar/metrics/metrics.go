// Package metrics defines the sidecar's Prometheus metrics on its own
// registry (never the global one), all prefixed falguard_sidecar_. No label
// ever carries request input: routes, hosts and directions are fixed sets and
// app labels are allowlist patterns.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Relay directions (label values of the relayed_* metrics).
const (
	AppToFal = "app_to_fal"
	FalToApp = "fal_to_app"
)

// Metrics is every collector the sidecar updates.
type Metrics struct {
	Registry *prometheus.Registry

	Requests        *prometheus.CounterVec   // route, code
	UpstreamLatency *prometheus.HistogramVec // host
	TokenHits       prometheus.Counter
	TokenMisses     prometheus.Counter
	TokenRefreshes  prometheus.Counter
	TokenErrors     prometheus.Counter
	RealtimeOpen    prometheus.Gauge
	RelayedBytes    *prometheus.CounterVec // direction
	RelayedMessages *prometheus.CounterVec // direction
	Reloads         prometheus.Counter
	ReloadErrors    prometheus.Counter
	RateLimited     prometheus.Counter
	AppRequests     *prometheus.CounterVec // app (allowlist pattern)
	AppErrors       *prometheus.CounterVec // app (allowlist pattern)
	Inflight        prometheus.Gauge
}

const ns = "falguard_sidecar"

// New registers everything on a fresh registry.
func New(version string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
			Help: "App API requests by route (proxy, token, realtime, quitquitquit, other) and HTTP status code."}, []string{"route", "code"}),
		UpstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "upstream_request_duration_seconds",
			Help:    "Time from sending a request to fal until its response headers (or WebSocket handshake), by canonical fal host.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"host"}),
		TokenHits:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "token_cache_hits_total", Help: "Realtime tokens served from the cache."}),
		TokenMisses:    prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "token_cache_misses_total", Help: "Token requests that had to wait for fal."}),
		TokenRefreshes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "token_cache_refreshes_total", Help: "Tokens minted at fal (misses and refreshes ahead of expiry)."}),
		TokenErrors:    prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "token_cache_errors_total", Help: "Failed token mints at fal."}),
		RealtimeOpen:   prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "realtime_connections_open", Help: "Realtime WebSocket relays currently open."}),
		RelayedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "relayed_bytes_total",
			Help: "Realtime payload bytes relayed, by direction (app_to_fal, fal_to_app)."}, []string{"direction"}),
		RelayedMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "relayed_messages_total",
			Help: "Realtime messages relayed, by direction (app_to_fal, fal_to_app)."}, []string{"direction"}),
		Reloads:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "credential_reloads_total", Help: "Successful loads of key and policy."}),
		ReloadErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "credential_reload_errors_total", Help: "Key/policy updates refused (the last good pair stays in use)."}),
		RateLimited:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "rate_limited_requests_total", Help: "Requests refused with 429 by the policy's rate limit."}),
		AppRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "app_requests_total",
			Help: "Requests and realtime sessions per allowlist pattern that admitted them."}, []string{"app"}),
		AppErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "app_errors_total",
			Help: "Of app_requests_total, those that ended in an error status (>=400), an upstream failure or an abnormal close."}, []string{"app"}),
		Inflight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "connections_inflight", Help: "App API requests and realtime relays in progress (compared against --max-connections)."}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "build_info", Help: "Always 1; the version label is the sidecar version."}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	m.Registry.MustRegister(m.Requests, m.UpstreamLatency, m.TokenHits, m.TokenMisses, m.TokenRefreshes, m.TokenErrors,
		m.RealtimeOpen, m.RelayedBytes, m.RelayedMessages, m.Reloads, m.ReloadErrors, m.RateLimited,
		m.AppRequests, m.AppErrors, m.Inflight, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Pre-create the fixed label values so dashboards see zeros, not gaps.
	for _, d := range []string{AppToFal, FalToApp} {
		m.RelayedBytes.WithLabelValues(d)
		m.RelayedMessages.WithLabelValues(d)
	}
	return m
}
