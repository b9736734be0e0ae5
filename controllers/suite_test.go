package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/hack/fakefal"
	"github.com/falguard/falguard/internal/falapi"
)

// The suite runs one real kube-apiserver + etcd (envtest, KUBEBUILDER_ASSETS
// from hack/envtest.sh) and one fakefal; each test starts its own manager,
// restricted to the test's namespace, with the controller registered for real.
var (
	testCfg    *rest.Config
	testScheme = runtime.NewScheme()
	k8s        client.Client
	fal        *fakefal.Server
)

const (
	adminKey   = "adminid:adminsecret"
	adminKeyID = "adminid"
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

// logBuf collects the manager's logs for the leak check.
var logBuf lockedBuffer

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}

func runSuite(m *testing.M) (code int) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if dir, err := filepath.Abs("../bin/k8s/v1.37.2"); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err == nil {
				os.Setenv("KUBEBUILDER_ASSETS", dir)
			}
		}
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Println("controllers: KUBEBUILDER_ASSETS unset and ./bin/k8s missing: run `make envtest` (or hack/envtest.sh); envtest suite skipped")
		return m.Run()
	}
	// Every log line (debug included) is kept and scanned at the end: no
	// key secret may ever be logged. Shown on stderr with FALGUARD_TEST_VERBOSE.
	var out io.Writer = &logBuf
	if os.Getenv("FALGUARD_TEST_VERBOSE") != "" {
		out = io.MultiWriter(&logBuf, os.Stderr)
	}
	logf.SetLogger(zap.New(zap.WriteTo(out), zap.Level(zapcore.Level(-5))))
	defer func() {
		// test secrets all contain "SECRET"; the admin key's half is "adminsecret"
		if b := logBuf.Bytes(); bytes.Contains(b, []byte("SECRET")) || bytes.Contains(b, []byte("adminsecret")) {
			fmt.Fprintln(os.Stderr, "FAIL: a key secret appeared in the manager's logs")
			code = 1
		}
	}()
	_ = clientgoscheme.AddToScheme(testScheme)
	_ = falguardv1alpha1.AddToScheme(testScheme)

	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	var err error
	testCfg, err = env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting envtest:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	testCfg.QPS, testCfg.Burst = 2000, 4000
	k8s, err = client.New(testCfg, client.Options{Scheme: testScheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	fal, err = fakefal.Start(fakefal.Options{AdminKeys: []string{adminKey}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakefal:", err)
		return 1
	}
	defer fal.Close()
	return m.Run()
}

func needEnv(t *testing.T) {
	t.Helper()
	if testCfg == nil {
		t.Skip("envtest not available (run `make envtest`)")
	}
}

// manager is one running manager with the FalCredential controller.
type manager struct {
	cancel context.CancelFunc
	done   chan struct{}
	rec    *FalCredentialReconciler
}

func (m *manager) stop(t *testing.T) {
	t.Helper()
	m.cancel()
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		t.Fatal("manager did not stop within 30s")
	}
}

// startManager runs a manager watching ns; hook (may be nil) is the
// reconciler's test hook, given the manager's cancel so it can "crash" it.
func startManager(t *testing.T, ns string, tune func(r *FalCredentialReconciler, cancel context.CancelFunc)) *manager {
	t.Helper()
	mgr, err := ctrl.NewManager(testCfg, ctrl.Options{
		Scheme:                 testScheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	fc, err := falapi.New(falapi.Options{Overrides: mustOverrides(t), CAFile: fal.CAFile(), Timeout: 5 * time.Second, OnCall: ObserveFalCall})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &FalCredentialReconciler{Fal: fc, SkipNameValidation: true, BackoffBase: 200 * time.Millisecond, BackoffMax: 2 * time.Second}
	if tune != nil {
		tune(r, cancel)
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	m := &manager{cancel: cancel, done: make(chan struct{}), rec: r}
	go func() {
		defer close(m.done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-m.done:
		case <-time.After(30 * time.Second):
		}
	})
	return m
}

func mustOverrides(t *testing.T) map[string]string {
	t.Helper()
	m, err := falapi.ParseOverrides(fal.Overrides())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var nsSeq struct {
	sync.Mutex
	n int
}

// newNamespace creates a fresh namespace for one test.
func newNamespace(t *testing.T, prefix string) string {
	t.Helper()
	nsSeq.Lock()
	nsSeq.n++
	name := fmt.Sprintf("%s-%d-%d", prefix, time.Now().Unix()%100000, nsSeq.n)
	nsSeq.Unlock()
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fal.ClearFaults() })
	return name
}

// eventually polls f every 50ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
}

func keySecret(ns, name, key string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string][]byte{"FAL_KEY": []byte(key)},
	}
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

func getFC(t *testing.T, ns, name string) *falguardv1alpha1.FalCredential {
	t.Helper()
	fc := &falguardv1alpha1.FalCredential{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, fc); err != nil {
		t.Fatal(err)
	}
	return fc
}

func getManaged(ns, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: falguardv1alpha1.ManagedSecretName(name)}, s)
	return s, err
}

// condIs checks a condition's status and (when non-empty) reason.
func condIs(fc *falguardv1alpha1.FalCredential, typ string, status metav1.ConditionStatus, reason string) error {
	c := meta.FindStatusCondition(fc.Status.Conditions, typ)
	if c == nil {
		return fmt.Errorf("no %s condition yet (conditions %v)", typ, fc.Status.Conditions)
	}
	if c.Status != status || (reason != "" && c.Reason != reason) {
		return fmt.Errorf("%s is %s/%s (%q), want %s/%s", typ, c.Status, c.Reason, c.Message, status, reason)
	}
	if c.ObservedGeneration != fc.Generation {
		return fmt.Errorf("%s observedGeneration %d, generation %d", typ, c.ObservedGeneration, fc.Generation)
	}
	return nil
}

func waitCond(t *testing.T, ns, name, typ string, status metav1.ConditionStatus, reason string) *falguardv1alpha1.FalCredential {
	t.Helper()
	var fc *falguardv1alpha1.FalCredential
	eventually(t, 20*time.Second, fmt.Sprintf("%s/%s %s=%s/%s", ns, name, typ, status, reason), func() error {
		fc = &falguardv1alpha1.FalCredential{}
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, fc); err != nil {
			return err
		}
		return condIs(fc, typ, status, reason)
	})
	return fc
}

// eventReasons lists the reasons of events recorded about a FalCredential.
func eventReasons(t *testing.T, ns, name string) map[string]string {
	t.Helper()
	list := &eventsv1.EventList{}
	if err := k8s.List(context.Background(), list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out[e.Reason] = e.Type + ": " + e.Note
		}
	}
	return out
}

// liveOperatorKeys are fakefal's live keys created for ns/name by the operator.
func liveOperatorKeys(ns, name string) []fakefal.KeyInfo {
	var out []fakefal.KeyInfo
	prefix := fmt.Sprintf("falguard-%s-%s-", ns, name)
	for _, k := range fal.Keys() {
		if k.CreatedByAPI && strings.HasPrefix(k.Alias, prefix) {
			out = append(out, k)
		}
	}
	return out
}

func isLive(keyID string) bool {
	for _, k := range fal.Keys() {
		if k.KeyID == keyID {
			return true
		}
	}
	return false
}

var errCrash = errors.New("simulated crash")
