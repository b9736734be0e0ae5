package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Metrics on controller-runtime's registry, served on the manager's
// --metrics-bind-address. Reconcile duration is controller-runtime's own
// controller_runtime_reconcile_time_seconds{controller="falcredential"}.
var (
	credentialReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "falguard_credential_ready",
		Help: "1 when the FalCredential's Ready condition is True, else 0.",
	}, []string{"namespace", "name"})
	rotationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "falguard_rotations_total",
		Help: "Key rotations attempted through fal's Platform API, by result (success, failure).",
	}, []string{"result"})
	revocationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "falguard_revocations_total",
		Help: "Operator-created keys deleted at fal (previous keys, orphans, on deletion), by result (success, failure).",
	}, []string{"result"})
	falAPICallsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "falguard_fal_api_calls_total",
		Help: "Calls the manager made to fal, by endpoint (tokens, keys_create, keys_list, keys_delete) and HTTP status (or \"error\" when no answer came).",
	}, []string{"endpoint", "status"})
)

func init() {
	metrics.Registry.MustRegister(credentialReady, rotationsTotal, revocationsTotal, falAPICallsTotal)
}

// ObserveFalCall records one fal API call; pass it as falapi.Options.OnCall.
func ObserveFalCall(endpoint, status string) {
	falAPICallsTotal.WithLabelValues(endpoint, status).Inc()
}

func result(err error) string {
	if err != nil {
		return "failure"
	}
	return "success"
}
