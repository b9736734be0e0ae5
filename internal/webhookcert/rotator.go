package webhookcert

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// AnnotationBundlePublished records when the Secret's ca-bundle.crt was last
// written into the webhook configuration: a certificate signed by a new CA is
// served only after API servers have had PropagationDelay to see that CA.
const AnnotationBundlePublished = "falguard.dev/ca-bundle-published-at"

// Options configures the Rotator. Zero values take the defaults below.
type Options struct {
	Namespace         string   // operator namespace holding the Secret
	SecretName        string   // default falguard-webhook-cert
	WebhookConfigName string   // MutatingWebhookConfiguration to patch
	Hosts             []string // SANs; the first is the CommonName
	CALifetime        time.Duration
	CertLifetime      time.Duration
	// PropagationDelay is how long a new CA sits in the caBundle before a
	// certificate it signed is served.
	PropagationDelay time.Duration
	// MaxCheckInterval bounds the time between two checks, so a caBundle
	// wiped by a re-applied manifest is put back promptly.
	MaxCheckInterval time.Duration
	Now              func() time.Time
}

// Defaults.
const (
	DefaultSecretName       = "falguard-webhook-cert"
	DefaultCALifetime       = 2 * 365 * 24 * time.Hour
	DefaultCertLifetime     = 90 * 24 * time.Hour
	DefaultPropagationDelay = 10 * time.Second
	DefaultMaxCheckInterval = time.Minute
)

func (o *Options) defaults() error {
	if o.Namespace == "" || o.WebhookConfigName == "" || len(o.Hosts) == 0 {
		return errors.New("webhookcert: Namespace, WebhookConfigName and Hosts are required")
	}
	if o.SecretName == "" {
		o.SecretName = DefaultSecretName
	}
	if o.CALifetime == 0 {
		o.CALifetime = DefaultCALifetime
	}
	if o.CertLifetime == 0 {
		o.CertLifetime = DefaultCertLifetime
	}
	if o.CertLifetime > o.CALifetime {
		return fmt.Errorf("webhookcert: certificate lifetime %s exceeds CA lifetime %s", o.CertLifetime, o.CALifetime)
	}
	if o.PropagationDelay == 0 {
		o.PropagationDelay = DefaultPropagationDelay
	}
	if o.MaxCheckInterval == 0 {
		o.MaxCheckInterval = DefaultMaxCheckInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// ServiceHosts are the names the API server uses for a service-based
// clientConfig (it verifies <service>.<namespace>.svc), plus extra SANs.
func ServiceHosts(service, namespace string, extra ...string) []string {
	hosts := []string{
		service + "." + namespace + ".svc",
		service,
		service + "." + namespace,
		service + "." + namespace + ".svc.cluster.local",
	}
	for _, h := range extra {
		if h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// Rotator is the leader's half: it writes the Secret and the caBundle.
type Rotator struct {
	opts   Options
	client client.Client // uncached: reads must see the latest resourceVersion
	keeper *Keeper       // fed directly so the leader is ready without a watch round trip
	log    logr.Logger
	kick   chan struct{}
	// watch, when set, kicks a check whenever the webhook configuration
	// changes (e.g. a re-applied manifest wiped its caBundle).
	watch kubernetes.Interface
}

// WatchWebhookConfig makes Start watch the configuration through cs.
func (r *Rotator) WatchWebhookConfig(cs kubernetes.Interface) { r.watch = cs }

func (r *Rotator) watchConfig(ctx context.Context) {
	lw := toolscache.NewListWatchFromClient(r.watch.AdmissionregistrationV1().RESTClient(), "mutatingwebhookconfigurations",
		metav1.NamespaceAll, fields.OneTermEqualSelector("metadata.name", r.opts.WebhookConfigName))
	_, informer := toolscache.NewInformerWithOptions(toolscache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &admissionregistrationv1.MutatingWebhookConfiguration{},
		Handler: toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { r.Kick() },
			UpdateFunc: func(any, any) { r.Kick() },
		},
	})
	informer.RunWithContext(ctx)
}

// NewRotator validates opts; c should be an uncached client.
func NewRotator(c client.Client, keeper *Keeper, opts Options, log logr.Logger) (*Rotator, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	return &Rotator{opts: opts, client: c, keeper: keeper, log: log, kick: make(chan struct{}, 1)}, nil
}

// Kick asks for a check now (e.g. the webhook configuration changed).
func (r *Rotator) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// NeedLeaderElection is true: only the leader writes, so replicas never race
// to publish different CAs.
func (r *Rotator) NeedLeaderElection() bool { return true }

// Start checks and renews until ctx ends; failures are retried with backoff
// capped at MaxCheckInterval.
func (r *Rotator) Start(ctx context.Context) error {
	if r.watch != nil {
		go r.watchConfig(ctx)
	}
	backoff := time.Second
	for {
		next, err := r.Reconcile(ctx)
		wait := time.Until(next)
		if err != nil {
			r.log.Error(err, "webhook certificate check failed; retrying", "in", backoff)
			wait = backoff
			backoff = min(backoff*2, r.opts.MaxCheckInterval)
		} else {
			backoff = time.Second
		}
		wait = max(min(wait, r.opts.MaxCheckInterval), 100*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-r.kick:
			t.Stop()
		case <-t.C:
		}
	}
}

// state is what the Secret holds, parsed.
type state struct {
	ca        *keyPair
	bundle    []*x509.Certificate
	serving   *keyPair
	published time.Time
}

// Reconcile brings the Secret and the webhook configuration up to date and
// returns when the next check is due.
func (r *Rotator) Reconcile(ctx context.Context) (time.Time, error) {
	now := r.opts.Now()
	key := client.ObjectKey{Namespace: r.opts.Namespace, Name: r.opts.SecretName}
	sec := &corev1.Secret{}
	exists := true
	if err := r.client.Get(ctx, key, sec); apierrors.IsNotFound(err) {
		exists = false
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
			Namespace: key.Namespace, Name: key.Name,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "falguard", "app.kubernetes.io/component": "webhook"},
		}, Type: corev1.SecretTypeOpaque}
	} else if err != nil {
		return now, fmt.Errorf("get Secret %s: %w", key, err)
	}
	st := readState(sec)
	changed := false

	// 1. CA: create, or renew at 2/3 of its life keeping the old one in the
	// bundle until it expires.
	if st.ca == nil || !now.Before(renewAt(st.ca.cert)) {
		ca, err := newCA(now, r.opts.CALifetime)
		if err != nil {
			return now, err
		}
		r.log.Info("issued webhook CA", "serial", ca.cert.SerialNumber.Text(16), "notAfter", ca.cert.NotAfter.Format(time.RFC3339), "renewal", st.ca != nil)
		st.ca = ca
		changed = true
	}
	bundle := []*x509.Certificate{st.ca.cert}
	for _, c := range st.bundle {
		if now.Before(c.NotAfter) && !c.Equal(st.ca.cert) && !containsCert(bundle, c) {
			bundle = append(bundle, c)
		}
	}
	bundlePEM := encodeBundle(bundle)
	if !bytes.Equal(bundlePEM, encodeBundle(st.bundle)) {
		st.bundle = bundle
		changed = true
	}

	// 2. The caBundle first: a certificate from a new CA must never be
	// served before API servers trust that CA.
	patched, err := r.publishBundle(ctx, bundlePEM)
	if err != nil {
		return now, err
	}
	if patched || st.published.IsZero() {
		st.published = now
		changed = true
	}

	// 3. Serving certificate: renew at 2/3 of its life, when the hosts
	// change, or once the current CA has propagated if it was signed by an
	// older one.
	next := renewAt(st.ca.cert)
	needCert := st.serving == nil ||
		!now.Before(renewAt(st.serving.cert)) ||
		!coversExactly(st.serving.cert, r.opts.Hosts) ||
		!signedBy(st.serving.cert, st.ca.cert, r.opts.Hosts, now)
	if needCert {
		propagated := now.Sub(st.published) >= r.opts.PropagationDelay
		usable := st.serving != nil && now.Before(st.serving.cert.NotAfter) && signedByAny(st.serving.cert, bundle, r.opts.Hosts, now)
		if usable && !propagated {
			// Keep serving the old certificate, still trusted through the
			// bundle, and come back when the new CA is safe to use.
			next = minTime(next, st.published.Add(r.opts.PropagationDelay))
		} else {
			cert, err := newServing(st.ca, r.opts.Hosts, now, r.opts.CertLifetime)
			if err != nil {
				return now, err
			}
			r.log.Info("issued webhook serving certificate", "serial", cert.cert.SerialNumber.Text(16), "notAfter", cert.cert.NotAfter.Format(time.RFC3339), "hosts", r.opts.Hosts)
			st.serving = cert
			changed = true
		}
	}
	if st.serving != nil {
		next = minTime(next, renewAt(st.serving.cert))
	}
	for _, c := range bundle[1:] {
		next = minTime(next, c.NotAfter) // prune expired CAs promptly
	}

	if changed {
		writeState(sec, st)
		if exists {
			err = r.client.Update(ctx, sec)
		} else {
			err = r.client.Create(ctx, sec)
		}
		if err != nil {
			return now, fmt.Errorf("write Secret %s: %w", key, err)
		}
	}
	certExpiry.WithLabelValues("ca").Set(float64(st.ca.cert.NotAfter.Unix()))
	if r.keeper != nil {
		r.keeper.load(sec)
	}
	return next, nil
}

// publishBundle sets caBundle on every webhook of the configuration; true when
// it had to change something.
func (r *Rotator) publishBundle(ctx context.Context, bundle []byte) (bool, error) {
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	err := r.client.Get(ctx, client.ObjectKey{Name: r.opts.WebhookConfigName}, mwc)
	if apierrors.IsNotFound(err) {
		// Nothing calls a webhook that is not configured; keep the Secret
		// (and replicas' readiness) going and patch it once it appears.
		r.log.Info("MutatingWebhookConfiguration not found yet; its caBundle will be set when it appears", "name", r.opts.WebhookConfigName)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get MutatingWebhookConfiguration %s (install config/webhook, or fix --webhook-config-name): %w", r.opts.WebhookConfigName, err)
	}
	changed := false
	for i := range mwc.Webhooks {
		if !bytes.Equal(mwc.Webhooks[i].ClientConfig.CABundle, bundle) {
			mwc.Webhooks[i].ClientConfig.CABundle = bundle
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	if err := r.client.Update(ctx, mwc); err != nil {
		return false, fmt.Errorf("update caBundle of MutatingWebhookConfiguration %s: %w", r.opts.WebhookConfigName, err)
	}
	r.log.Info("published webhook CA bundle", "webhookConfiguration", r.opts.WebhookConfigName, "cas", len(parseBundle(bundle)))
	return true, nil
}

func readState(sec *corev1.Secret) state {
	var st state
	if ca, err := parseKeyPair(sec.Data[KeyCACert], sec.Data[KeyCAKey]); err == nil && ca.cert.IsCA {
		st.ca = ca
	}
	st.bundle = parseBundle(sec.Data[KeyCABundle])
	if kp, err := parseKeyPair(sec.Data[KeyTLSCert], sec.Data[KeyTLSKey]); err == nil {
		st.serving = kp
	}
	if t, err := time.Parse(time.RFC3339Nano, sec.Annotations[AnnotationBundlePublished]); err == nil {
		st.published = t
	}
	return st
}

func writeState(sec *corev1.Secret, st state) {
	sec.Data = map[string][]byte{
		KeyCACert:   st.ca.certPEM,
		KeyCAKey:    st.ca.keyPEM,
		KeyCABundle: encodeBundle(st.bundle),
		KeyTLSCert:  st.serving.certPEM,
		KeyTLSKey:   st.serving.keyPEM,
	}
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations[AnnotationBundlePublished] = st.published.UTC().Format(time.RFC3339Nano)
}

func signedByAny(leaf *x509.Certificate, cas []*x509.Certificate, hosts []string, now time.Time) bool {
	for _, ca := range cas {
		if signedBy(leaf, ca, hosts, now) {
			return true
		}
	}
	return false
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
