package podwebhook

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	admissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "falguard_webhook_admissions_total",
		Help: "Pod admissions handled by the falguard webhook, by result: injected, unchanged, denied, error.",
	}, []string{"result"})

	injectionDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "falguard_webhook_injection_duration_seconds",
		Help:    "Time the webhook took to admit an annotated pod (credential lookup and mutation).",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
	})

	podsMissingSidecar = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "falguard_pods_missing_sidecar",
		Help: "Pods that carry falguard.dev/inject but were admitted without the sidecar (e.g. under failurePolicy Ignore).",
	})
)

func init() {
	metrics.Registry.MustRegister(admissions, injectionDuration, podsMissingSidecar)
}
