package podwebhook

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/rand"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/internal/inject"
)

// The suite runs one real API server (envtest) that calls the webhook over
// TLS, configured from the real config/webhook manifests.
var (
	testEnv   *envtest.Environment
	cfg       *rest.Config
	k8s       client.Client
	scheme    = runtime.NewScheme()
	setup     *Result
	sidecarIm = "ghcr.io/falguard/falguard-sidecar:test"
)

const operatorNS = "falguard-system"

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		if dir, _ := filepath.Abs("../../bin/k8s/v1.37.2"); dirExists(dir) {
			os.Setenv("KUBEBUILDER_ASSETS", dir)
		} else {
			fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `hack/envtest.sh` (or `make envtest`) and export the directory it prints")
			return 1
		}
	}
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.Level(zapcore.Level(zapLevel()))))
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(falguardv1alpha1.AddToScheme(scheme))

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths: []string{filepath.Join("..", "..", "config", "webhook")},
		},
	}
	var err error
	if cfg, err = testEnv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "start envtest:", err)
		return 1
	}
	defer func() { _ = testEnv.Stop() }()
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNS}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	// The manager as main.go builds it, but serving envtest's certificate
	// from its cert dir (cert-manager mode); the self-managed path has its
	// own test.
	wio := &testEnv.WebhookInstallOptions
	mgr, err := newManager()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	setup, err = Setup(mgr, Options{
		Host: wio.LocalServingHost, Port: wio.LocalServingPort, CertDir: wio.LocalServingCertDir,
		Namespace: operatorNS, ServiceName: "falguard-webhook-service", WebhookConfigName: "falguard-mutating-webhook",
		Inject: inject.Config{Image: sidecarIm},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	if err := waitFor(30*time.Second, func() error { return setup.Server.StartedChecker()(nil) }); err != nil {
		fmt.Fprintln(os.Stderr, "webhook server did not start:", err)
		return 1
	}
	code := m.Run()
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
	}
	return code
}

func newManager() (ctrl.Manager, error) {
	return ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// Several managers in one test process register the same controller.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
}

func zapLevel() int8 {
	if os.Getenv("FALGUARD_TEST_VERBOSE") != "" {
		return -1
	}
	return 2 // errors only: keep `go test` output readable
}

func dirExists(d string) bool {
	st, err := os.Stat(d)
	return err == nil && st.IsDir()
}

// waitFor polls f until it returns nil or the timeout passes.
func waitFor(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newNamespace creates a namespace with a FalCredential per name.
func newNamespace(t *testing.T, credentials ...string) string {
	t.Helper()
	ctx := context.Background()
	ns := "shop-" + rand.String(6)
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range credentials {
		fc := &falguardv1alpha1.FalCredential{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: falguardv1alpha1.FalCredentialSpec{
				SecretRef:   &falguardv1alpha1.SecretKeySelector{Name: "fal-api-key", Key: "FAL_KEY"},
				AllowedApps: []string{"fal-ai/fast-lcm-diffusion"},
			},
		}
		if err := k8s.Create(ctx, fc); err != nil {
			t.Fatalf("create FalCredential: %v", err)
		}
	}
	return ns
}
