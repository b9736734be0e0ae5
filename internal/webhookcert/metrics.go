package webhookcert

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// certExpiry lets an alert fire well before the webhook's TLS breaks; the
// label is "ca" or "serving".
var certExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "falguard_webhook_cert_expiry_timestamp_seconds",
	Help: "Unix time at which the webhook's CA or serving certificate expires.",
}, []string{"cert"})

func init() { metrics.Registry.MustRegister(certExpiry) }
