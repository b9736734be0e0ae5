package podwebhook

import (
	"crypto/tls"
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/falguard/falguard/internal/inject"
	"github.com/falguard/falguard/internal/webhookcert"
)

// Options wires the webhook into a manager (from the manager's flags).
type Options struct {
	// Port the webhook server listens on (all interfaces); Host narrows it.
	Port int
	Host string
	// SelfManagedCerts: the leader keeps a CA and serving certificate in
	// Secret CertSecretName and the caBundle of WebhookConfigName current;
	// every replica serves from that Secret. False: serve CertDir's
	// tls.crt/tls.key (e.g. from cert-manager), reloaded on change.
	SelfManagedCerts  bool
	CertDir           string
	Namespace         string
	ServiceName       string
	WebhookConfigName string
	// CertHosts are extra SANs (IPs or names), e.g. 127.0.0.1 for a manager
	// reached through a URL clientConfig.
	CertHosts []string
	// Cert tunes lifetimes (tests shorten them); Namespace, Hosts and
	// WebhookConfigName are filled in from the fields above.
	Cert webhookcert.Options
	// Inject is the operator-wide sidecar configuration.
	Inject inject.Config
}

// Result exposes what Setup built, for tests and health checks.
type Result struct {
	Server   webhook.Server
	Keeper   *webhookcert.Keeper  // nil unless SelfManagedCerts
	Rotator  *webhookcert.Rotator // nil unless SelfManagedCerts
	Reporter *MissingSidecarReporter
}

// Setup adds the webhook server (its own, not mgr.GetWebhookServer(), because
// self-managed certificates are served from memory), the certificate keeper
// and rotator, the missing-sidecar reporter and readiness checks to mgr.
func Setup(mgr ctrl.Manager, o Options) (*Result, error) {
	if o.Inject.Image == "" {
		return nil, errors.New("podwebhook: the sidecar image is required (--sidecar-image)")
	}
	// A bad default would deny every pod; refuse it once, at start-up.
	if err := o.Inject.Validate(); err != nil {
		return nil, fmt.Errorf("podwebhook: sidecar defaults: %w", err)
	}
	res := &Result{}
	tlsOpts := []func(*tls.Config){func(c *tls.Config) {
		// HTTP/1.1 only: avoids HTTP/2 rapid-reset exposure, as kubebuilder does.
		c.NextProtos = []string{"http/1.1"}
	}}
	if o.SelfManagedCerts {
		cs, err := kubernetes.NewForConfig(mgr.GetConfig())
		if err != nil {
			return nil, fmt.Errorf("podwebhook: clientset: %w", err)
		}
		certOpts := o.Cert
		certOpts.Namespace = o.Namespace
		certOpts.WebhookConfigName = o.WebhookConfigName
		certOpts.Hosts = webhookcert.ServiceHosts(o.ServiceName, o.Namespace, o.CertHosts...)
		secret := certOpts.SecretName
		if secret == "" {
			secret = webhookcert.DefaultSecretName
		}
		log := ctrl.Log.WithName("webhook-cert")
		res.Keeper = webhookcert.NewKeeper(cs, o.Namespace, secret, log)
		// Uncached client: the rotator must read the latest Secret and
		// configuration, and the manager's cache need not hold every Secret.
		direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
		if err != nil {
			return nil, fmt.Errorf("podwebhook: client: %w", err)
		}
		res.Rotator, err = webhookcert.NewRotator(direct, res.Keeper, certOpts, log)
		if err != nil {
			return nil, err
		}
		res.Rotator.WatchWebhookConfig(cs)
		if err := mgr.Add(res.Keeper); err != nil {
			return nil, err
		}
		if err := mgr.Add(res.Rotator); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("webhook-cert", res.Keeper.ReadyCheck); err != nil {
			return nil, err
		}
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.GetCertificate = res.Keeper.GetCertificate })
	}
	res.Server = webhook.NewServer(webhook.Options{Host: o.Host, Port: o.Port, CertDir: o.CertDir, TLSOpts: tlsOpts})
	res.Server.Register(Path, &admission.Webhook{Handler: &Handler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Config:    o.Inject,
		Log:       ctrl.Log.WithName("pod-webhook"),
	}})
	if err := mgr.Add(res.Server); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("webhook", res.Server.StartedChecker()); err != nil {
		return nil, err
	}

	res.Reporter = &MissingSidecarReporter{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("falguard-webhook")}
	if err := res.Reporter.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("podwebhook: missing-sidecar reporter: %w", err)
	}
	return res, nil
}
