package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
)

// Metrics on controller-runtime's registry, served on the manager's
// --metrics-bind-address. Reconcile duration is controller-runtime's own
// controller_runtime_reconcile_time_seconds{controller="falcredential"}.
var (
	credentialReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "falguard_credential_ready",
		Help: "1 when the FalCredential's Ready condition is True, else 0.",
	}, []string{"namespace", "name"})
	// Timestamps rather than "seconds until" gauges: they stay constant between
	// reconciles, so alerts compute the age with time() exactly.
	previousKeyRevokeAt = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "falguard_credential_previous_key_revoke_at_timestamp_seconds",
		Help: "Unix time when the previous operator-created key is due to be deleted at fal; absent when there is no previous key.",
	}, []string{"namespace", "name"})
	nextRotation = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "falguard_credential_next_rotation_timestamp_seconds",
		Help: "Unix time of the next scheduled key rotation; absent when the credential has no spec.rotation or no key yet.",
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
	metrics.Registry.MustRegister(credentialReady, previousKeyRevokeAt, nextRotation, rotationsTotal, revocationsTotal, falAPICallsTotal)
}

// ObserveFalCall records one fal API call; pass it as falapi.Options.OnCall.
func ObserveFalCall(endpoint, status string) {
	falAPICallsTotal.WithLabelValues(endpoint, status).Inc()
}

// observeSchedule mirrors the status timestamps into their gauges; a nil
// time deletes the series so no stale deadline keeps an alert firing.
func observeSchedule(namespace, name string, st *falguardv1alpha1.FalCredentialStatus) {
	setTimestamp(previousKeyRevokeAt, namespace, name, st.PreviousKeyRevokeAt)
	setTimestamp(nextRotation, namespace, name, st.NextRotationTime)
}

func setTimestamp(g *prometheus.GaugeVec, namespace, name string, t *metav1.Time) {
	if t == nil {
		g.DeleteLabelValues(namespace, name)
		return
	}
	g.WithLabelValues(namespace, name).Set(float64(t.Unix()))
}

// forgetCredentialMetrics drops every per-credential series of a credential
// that is gone.
func forgetCredentialMetrics(namespace, name string) {
	credentialReady.DeleteLabelValues(namespace, name)
	previousKeyRevokeAt.DeleteLabelValues(namespace, name)
	nextRotation.DeleteLabelValues(namespace, name)
}

func result(err error) string {
	if err != nil {
		return "failure"
	}
	return "success"
}
