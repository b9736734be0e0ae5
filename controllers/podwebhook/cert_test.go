package podwebhook

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/falguard/falguard/internal/inject"
	"github.com/falguard/falguard/internal/webhookcert"
)

const configName = "falguard-mutating-webhook"

// TestSelfManagedCertRotation runs the manager's self-managed certificate
// path for real, as the local demo does: the webhook configuration points at
// https://127.0.0.1:<port> with no caBundle; the manager must create the CA
// and serving certificate, patch the caBundle, and keep renewing them (short
// lifetimes force a CA rotation and several serving-certificate renewals)
// while pods are admitted in a loop, without a single failed admission.
func TestSelfManagedCertRotation(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port := freePort(t)

	// Point the real configuration at the self-managed manager; put envtest's
	// clientConfig back afterwards for the other tests.
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := k8s.Get(ctx, client.ObjectKey{Name: configName}, mwc); err != nil {
		t.Fatal(err)
	}
	orig := mwc.DeepCopy()
	url := fmt.Sprintf("https://127.0.0.1:%d%s", port, Path)
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url}
	}
	if err := k8s.Update(ctx, mwc); err != nil {
		t.Fatal(err)
	}

	mgr, err := newManager()
	if err != nil {
		t.Fatal(err)
	}
	res, err := Setup(mgr, Options{
		Host: "127.0.0.1", Port: port, SelfManagedCerts: true,
		Namespace: operatorNS, ServiceName: "falguard-webhook-service", WebhookConfigName: configName,
		CertHosts: []string{"127.0.0.1"},
		Cert: webhookcert.Options{
			CALifetime: 30 * time.Second, CertLifetime: 12 * time.Second,
			PropagationDelay: 2 * time.Second, MaxCheckInterval: time.Second,
		},
		Inject: inject.Config{Image: sidecarIm},
	})
	if err != nil {
		t.Fatal(err)
	}
	mgrDone := make(chan struct{})
	go func() {
		defer close(mgrDone)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-mgrDone:
		case <-time.After(15 * time.Second):
			t.Error("self-managed manager did not stop")
		}
		restore := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Name: configName}, restore); err != nil {
			t.Fatal(err)
		}
		restore.Webhooks = orig.Webhooks
		if err := k8s.Update(context.Background(), restore); err != nil {
			t.Fatal(err)
		}
	})

	// Another replica: serves from the Secret, never writes.
	replica := webhookcert.NewKeeper(kubernetes.NewForConfigOrDie(cfg), operatorNS, webhookcert.DefaultSecretName, logr.Discard())
	go func() { _ = replica.Start(ctx) }()

	if err := waitFor(20*time.Second, func() error { return res.Keeper.ReadyCheck(nil) }); err != nil {
		t.Fatalf("manager never became ready: %v", err)
	}
	if err := waitFor(10*time.Second, func() error {
		if len(currentBundle(t, ctx)) == 0 {
			return fmt.Errorf("caBundle of %s not patched", configName)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	ns := newNamespace(t, "realtime")
	var (
		admitted, handshakes atomic.Int64
		mu                   sync.Mutex
		failures             []string
		cas                  = map[string]bool{}
		maxBundle            int
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 10 {
			failures = append(failures, fmt.Sprintf(time.Now().Format("15:04:05.000 ")+format, args...))
		}
	}
	const loop = 27 * time.Second // past one CA renewal (~20s) and serving renewals (~8s)
	deadline := time.Now().Add(loop)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // admissions through the API server
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			pod := annotatedPod(ns, "rot-"+strconv.Itoa(i), "realtime", nil)
			if err := k8s.Create(context.Background(), pod); err != nil {
				fail("admission %d: %v", i, err)
			} else if !inject.Injected(pod) {
				fail("admission %d: pod stored without the sidecar", i)
			} else {
				admitted.Add(1)
			}
			time.Sleep(25 * time.Millisecond)
		}
	}()
	go func() { // fresh TLS handshakes as a new API server would make them
		defer wg.Done()
		for time.Now().Before(deadline) {
			bundle := currentBundle(t, ctx)
			pool := x509.NewCertPool()
			certs := parsePEM(bundle)
			for _, c := range certs {
				pool.AddCert(c)
			}
			mu.Lock()
			for _, c := range certs {
				cas[string(c.Raw)] = true
			}
			maxBundle = max(maxBundle, len(certs))
			mu.Unlock()
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", port),
				&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
			if err != nil {
				fail("handshake with the caBundle's CAs: %v", err)
			} else {
				_ = conn.Close()
				handshakes.Add(1)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	wg.Wait()

	t.Logf("admitted %d pods and made %d fresh handshakes over %v; serving certificate changed %d times; %d CAs seen, up to %d at once in the caBundle",
		admitted.Load(), handshakes.Load(), loop, res.Keeper.Swaps(), len(cas), maxBundle)
	if len(failures) > 0 {
		t.Fatalf("failures during rotation:\n%v", failures)
	}
	if admitted.Load() == 0 {
		t.Fatal("no pod was admitted")
	}
	if res.Keeper.Swaps() < 3 {
		t.Errorf("serving certificate changed %d times, want >= 3 (initial + renewals)", res.Keeper.Swaps())
	}
	if len(cas) < 2 || maxBundle < 2 {
		t.Errorf("CA never rotated with overlap: %d CAs seen, at most %d in the bundle at once", len(cas), maxBundle)
	}
	// The replica follows the Secret without a restart.
	if err := waitFor(5*time.Second, func() error {
		if replica.Serial() != res.Keeper.Serial() {
			return fmt.Errorf("replica serves %q, leader %q", replica.Serial(), res.Keeper.Serial())
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if replica.Swaps() < 3 {
		t.Errorf("replica reloaded %d times, want >= 3", replica.Swaps())
	}
	sec := &corev1.Secret{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: operatorNS, Name: webhookcert.DefaultSecretName}, sec); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{webhookcert.KeyCACert, webhookcert.KeyCAKey, webhookcert.KeyCABundle, webhookcert.KeyTLSCert, webhookcert.KeyTLSKey} {
		if len(sec.Data[k]) == 0 {
			t.Errorf("certificate Secret lacks %s", k)
		}
	}
}

func currentBundle(t *testing.T, ctx context.Context) []byte {
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := k8s.Get(ctx, client.ObjectKey{Name: configName}, mwc); err != nil {
		t.Error(err)
		return nil
	}
	return mwc.Webhooks[0].ClientConfig.CABundle
}

func parsePEM(b []byte) []*x509.Certificate {
	pool := []*x509.Certificate{}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return pool
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			pool = append(pool, c)
		}
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
