package webhookcert

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// clock is a settable time source for the rotator.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

type fixture struct {
	t      *testing.T
	c      client.Client
	clk    *clock
	r      *Rotator
	keeper *Keeper
}

func newFixture(t *testing.T, hosts ...string) *fixture {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "falguard-mutating-webhook"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{
			{Name: "a.falguard.dev"}, {Name: "b.falguard.dev"},
		},
	}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(mwc).Build()
	clk := &clock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	if len(hosts) == 0 {
		hosts = ServiceHosts("falguard-webhook-service", "falguard-system", "127.0.0.1")
	}
	keeper := NewKeeper(nil, "falguard-system", DefaultSecretName, logr.Discard())
	keeper.now = clk.now
	r, err := NewRotator(c, keeper, Options{
		Namespace: "falguard-system", WebhookConfigName: "falguard-mutating-webhook", Hosts: hosts,
		CALifetime: 300 * 24 * time.Hour, CertLifetime: 30 * 24 * time.Hour, PropagationDelay: 10 * time.Second,
		Now: clk.now,
	}, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, c: c, clk: clk, r: r, keeper: keeper}
}

func (f *fixture) reconcile() time.Time {
	f.t.Helper()
	next, err := f.r.Reconcile(context.Background())
	if err != nil {
		f.t.Fatalf("reconcile at %s: %v", f.clk.t, err)
	}
	return next
}

func (f *fixture) state() (state, *corev1.Secret) {
	f.t.Helper()
	sec := &corev1.Secret{}
	if err := f.c.Get(context.Background(), client.ObjectKey{Namespace: "falguard-system", Name: DefaultSecretName}, sec); err != nil {
		f.t.Fatal(err)
	}
	return readState(sec), sec
}

func (f *fixture) bundles() [][]byte {
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := f.c.Get(context.Background(), client.ObjectKey{Name: "falguard-mutating-webhook"}, mwc); err != nil {
		f.t.Fatal(err)
	}
	var out [][]byte
	for _, w := range mwc.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out
}

// trusted reports whether the API server, holding the webhook's caBundle,
// would accept the certificate being served.
func (f *fixture) trusted() bool {
	st, _ := f.state()
	for _, b := range f.bundles() {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return false
		}
		for _, h := range f.r.opts.Hosts {
			if _, err := st.serving.cert.Verify(x509.VerifyOptions{DNSName: h, Roots: pool, CurrentTime: f.clk.t}); err != nil {
				return false
			}
		}
	}
	return true
}

func TestBootstrap(t *testing.T) {
	f := newFixture(t)
	if f.keeper.ReadyCheck(nil) == nil {
		t.Fatal("ready before any certificate")
	}
	next := f.reconcile()
	st, _ := f.state()
	if st.ca == nil || st.serving == nil || len(st.bundle) != 1 {
		t.Fatalf("incomplete state: ca=%v serving=%v bundle=%d", st.ca != nil, st.serving != nil, len(st.bundle))
	}
	if !f.trusted() {
		t.Fatal("caBundle does not verify the serving certificate for every host")
	}
	if err := f.keeper.ReadyCheck(nil); err != nil {
		t.Fatalf("not ready after bootstrap: %v", err)
	}
	if want := renewAt(st.serving.cert); !next.Equal(want) {
		t.Errorf("next check %s, want the serving renewal at %s", next, want)
	}
	// 2/3 of the 30-day lifetime (plus backdating) from now.
	if d := next.Sub(f.clk.t); d < 19*24*time.Hour || d > 21*24*time.Hour {
		t.Errorf("renewal in %s, want about 20 days", d)
	}
	// Nothing to do: the Secret is not rewritten.
	_, sec := f.state()
	f.clk.advance(time.Hour)
	f.reconcile()
	if _, sec2 := f.state(); sec2.ResourceVersion != sec.ResourceVersion {
		t.Error("Secret rewritten although nothing was due")
	}
}

func TestServingRenewalKeepsCA(t *testing.T) {
	f := newFixture(t)
	next := f.reconcile()
	before, _ := f.state()
	f.clk.t = next
	f.reconcile()
	after, _ := f.state()
	if after.serving.cert.SerialNumber.Cmp(before.serving.cert.SerialNumber) == 0 {
		t.Fatal("serving certificate not renewed at 2/3 of its lifetime")
	}
	if !after.ca.cert.Equal(before.ca.cert) || len(after.bundle) != 1 {
		t.Error("a serving renewal must not touch the CA or the bundle")
	}
	if !f.trusted() {
		t.Error("renewed certificate not trusted")
	}
	if f.keeper.Serial() != after.serving.cert.SerialNumber.Text(16) {
		t.Error("keeper still serves the old certificate")
	}
}

// TestCARotation: the new CA goes into the bundle next to the old one; the
// old serving certificate stays until the new CA had time to propagate; the
// old CA leaves the bundle only once it has expired.
func TestCARotation(t *testing.T) {
	f := newFixture(t)
	f.reconcile()
	first, _ := f.state()
	// Jump to the CA's renewal time, renewing the serving cert on the way
	// as the loop would.
	for f.clk.t.Before(renewAt(first.ca.cert)) {
		f.clk.t = minTime(f.reconcile(), renewAt(first.ca.cert))
	}
	servingBefore, _ := f.state()
	f.reconcile()
	mid, _ := f.state()
	if mid.ca.cert.Equal(first.ca.cert) {
		t.Fatal("CA not renewed at 2/3 of its lifetime")
	}
	if len(mid.bundle) != 2 || !mid.bundle[0].Equal(mid.ca.cert) || !mid.bundle[1].Equal(first.ca.cert) {
		t.Fatalf("bundle during rollover has %d CAs, want new then old", len(mid.bundle))
	}
	if mid.serving.cert.SerialNumber.Cmp(servingBefore.serving.cert.SerialNumber) != 0 {
		t.Fatal("serving certificate switched to the new CA before the bundle propagated")
	}
	if !f.trusted() {
		t.Fatal("old serving certificate not trusted through the rollover bundle")
	}

	next := f.reconcile()
	if want := mid.published.Add(10 * time.Second); !next.Equal(want) {
		t.Errorf("next check %s, want end of propagation %s", next, want)
	}
	f.clk.t = next
	f.reconcile()
	done, _ := f.state()
	if !signedBy(done.serving.cert, done.ca.cert, f.r.opts.Hosts, f.clk.t) {
		t.Fatal("after propagation the serving certificate is not from the new CA")
	}
	if !f.trusted() {
		t.Fatal("new serving certificate not trusted")
	}

	// The old CA stays until it expires, then is pruned.
	f.clk.t = first.ca.cert.NotAfter.Add(-time.Second)
	f.reconcile()
	if st, _ := f.state(); len(st.bundle) != 2 {
		t.Errorf("old CA dropped %d before it expired", len(st.bundle))
	}
	f.clk.t = first.ca.cert.NotAfter.Add(time.Second)
	f.reconcile()
	if st, _ := f.state(); len(st.bundle) != 1 {
		t.Errorf("expired CA still in the bundle (%d CAs)", len(st.bundle))
	}
	if !f.trusted() {
		t.Error("not trusted after pruning")
	}
}

func TestRepairs(t *testing.T) {
	t.Run("wiped caBundle is put back", func(t *testing.T) {
		f := newFixture(t)
		f.reconcile()
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		_ = f.c.Get(context.Background(), client.ObjectKey{Name: "falguard-mutating-webhook"}, mwc)
		mwc.Webhooks[1].ClientConfig.CABundle = nil
		if err := f.c.Update(context.Background(), mwc); err != nil {
			t.Fatal(err)
		}
		f.reconcile()
		if !f.trusted() {
			t.Fatal("caBundle not restored")
		}
	})
	t.Run("configuration created after the manager", func(t *testing.T) {
		f := newFixture(t)
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		_ = f.c.Get(context.Background(), client.ObjectKey{Name: "falguard-mutating-webhook"}, mwc)
		if err := f.c.Delete(context.Background(), mwc); err != nil {
			t.Fatal(err)
		}
		f.reconcile()
		if err := f.keeper.ReadyCheck(nil); err != nil {
			t.Fatalf("not ready while the configuration is missing: %v", err)
		}
		mwc.ResourceVersion = ""
		if err := f.c.Create(context.Background(), mwc); err != nil {
			t.Fatal(err)
		}
		f.reconcile()
		if !f.trusted() {
			t.Fatal("caBundle not set once the configuration appeared")
		}
	})
	t.Run("hosts changed", func(t *testing.T) {
		f := newFixture(t)
		f.reconcile()
		f.r.opts.Hosts = append(f.r.opts.Hosts, "localhost")
		f.reconcile()
		st, _ := f.state()
		if !coversExactly(st.serving.cert, f.r.opts.Hosts) {
			t.Fatalf("certificate names %v %v, want %v", st.serving.cert.DNSNames, st.serving.cert.IPAddresses, f.r.opts.Hosts)
		}
	})
	t.Run("corrupt Secret is regenerated", func(t *testing.T) {
		f := newFixture(t)
		f.reconcile()
		_, sec := f.state()
		sec.Data[KeyTLSKey] = []byte("garbage")
		sec.Data[KeyCAKey] = []byte("garbage")
		if err := f.c.Update(context.Background(), sec); err != nil {
			t.Fatal(err)
		}
		f.clk.advance(time.Minute) // propagation of the new CA
		f.reconcile()
		f.clk.advance(time.Minute)
		f.reconcile()
		if !f.trusted() {
			t.Fatal("not trusted after repairing a corrupt Secret")
		}
	})
}

func TestExpiredCertificateIsNotReady(t *testing.T) {
	f := newFixture(t)
	f.reconcile()
	st, _ := f.state()
	f.clk.t = st.serving.cert.NotAfter
	if f.keeper.ReadyCheck(nil) == nil {
		t.Fatal("ready while serving an expired certificate")
	}
}

func TestOptionsValidation(t *testing.T) {
	_, err := NewRotator(nil, nil, Options{Namespace: "x", WebhookConfigName: "y", Hosts: []string{"h"}, CALifetime: time.Hour, CertLifetime: 2 * time.Hour}, logr.Discard())
	if err == nil {
		t.Error("certificate outliving its CA accepted")
	}
	if _, err := NewRotator(nil, nil, Options{Namespace: "x"}, logr.Discard()); err == nil {
		t.Error("missing hosts accepted")
	}
}
