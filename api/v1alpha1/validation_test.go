package v1alpha1_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	v1 "github.com/falguard/falguard/api/v1alpha1"
)

// The API suite runs against a real kube-apiserver and etcd so that what a
// user meets at `kubectl apply` time (OpenAPI, CEL, defaults) is what we test.
var k8s client.Client

func TestMain(m *testing.M) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		// Run through `make test` (or `make envtest` and export KUBEBUILDER_ASSETS).
		println("KUBEBUILDER_ASSETS is not set: run `make test`, which builds the control plane")
		os.Exit(1)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		println("starting envtest:", err.Error())
		os.Exit(1)
	}
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1.AddToScheme(scheme)
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		println("client:", err.Error())
		_ = env.Stop()
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func namespace(t *testing.T, name string) {
	t.Helper()
	err := k8s.Create(ctx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func TestSamplesAreAccepted(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "samples", "falguard_v1alpha1_*.yaml"))
	if err != nil || len(files) < 2 {
		t.Fatalf("want the samples under config/samples, got %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(data, &u.Object); err != nil {
				t.Fatal(err)
			}
			namespace(t, u.GetNamespace())
			if err := k8s.Create(ctx(t), u); err != nil {
				t.Fatalf("sample %s rejected: %v", f, err)
			}
		})
	}
}

func TestDefaultsAreApplied(t *testing.T) {
	namespace(t, "defaults")
	fc := &v1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Name: "minimal", Namespace: "defaults"},
		Spec: v1.FalCredentialSpec{
			SecretRef:   &v1.SecretKeySelector{Name: "fal-api-key"},
			AllowedApps: []string{"fal-ai/flux/*"},
			Rotation:    &v1.RotationSpec{AdminSecretRef: v1.SecretKeySelector{Name: "admin"}},
		},
	}
	if err := k8s.Create(ctx(t), fc); err != nil {
		t.Fatal(err)
	}
	got := &v1.FalCredential{}
	if err := k8s.Get(ctx(t), client.ObjectKeyFromObject(fc), got); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		field, got, want string
	}{
		{"spec.secretRef.key", got.Spec.SecretRef.Key, "FAL_KEY"},
		{"spec.token.ttl", got.Spec.Token.TTL.Duration.String(), "2m0s"},
		{"spec.proxy.maxRequestBytes", quantity(got.Spec.Proxy.MaxRequestBytes), "32Mi"},
		{"spec.rotation.every", got.Spec.Rotation.Every.Duration.String(), "720h0m0s"},
		{"spec.rotation.gracePeriod", got.Spec.Rotation.GracePeriod.Duration.String(), "10m0s"},
		{"spec.rotation.adminSecretRef.key", got.Spec.Rotation.AdminSecretRef.Key, "FAL_KEY"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s defaulted to %q, want %q", c.field, c.got, c.want)
		}
	}
}

func quantity(q *resource.Quantity) string {
	if q == nil {
		return "<nil>"
	}
	return q.String()
}

func TestInvalidCredentialsAreRejected(t *testing.T) {
	namespace(t, "invalid")
	valid := func() *v1.FalCredential {
		return &v1.FalCredential{
			ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: "invalid"},
			Spec: v1.FalCredentialSpec{
				SecretRef:   &v1.SecretKeySelector{Name: "fal-api-key", Key: "FAL_KEY"},
				AllowedApps: []string{"fal-ai/flux/*"},
			},
		}
	}
	q := func(s string) *resource.Quantity { v := resource.MustParse(s); return &v }
	rotation := func(every, grace time.Duration) *v1.RotationSpec {
		return &v1.RotationSpec{
			AdminSecretRef: v1.SecretKeySelector{Name: "admin", Key: "FAL_ADMIN_KEY"},
			Every:          metav1.Duration{Duration: every},
			GracePeriod:    metav1.Duration{Duration: grace},
		}
	}
	cases := []struct {
		name   string
		mutate func(*v1.FalCredential)
		want   []string // every fragment must appear in the error
	}{
		{"no secretRef and no rotation", func(f *v1.FalCredential) { f.Spec.SecretRef = nil },
			[]string{"spec.secretRef is required unless spec.rotation"}},
		{"no allowed apps", func(f *v1.FalCredential) { f.Spec.AllowedApps = nil },
			[]string{"spec.allowedApps", "Required"}},
		{"empty allowed apps", func(f *v1.FalCredential) { f.Spec.AllowedApps = []string{} },
			[]string{"spec.allowedApps"}},
		{"app without owner", func(f *v1.FalCredential) { f.Spec.AllowedApps = []string{"flux"} },
			[]string{"spec.allowedApps[0]", "should match"}},
		{"app with scheme", func(f *v1.FalCredential) { f.Spec.AllowedApps = []string{"https://fal.run/fal-ai/flux"} },
			[]string{"spec.allowedApps[0]"}},
		{"app with empty segment", func(f *v1.FalCredential) { f.Spec.AllowedApps = []string{"fal-ai//flux"} },
			[]string{"spec.allowedApps[0]"}},
		{"duplicate apps", func(f *v1.FalCredential) { f.Spec.AllowedApps = []string{"a/b", "a/b"} },
			[]string{"spec.allowedApps[1]", "Duplicate"}},
		{"token ttl too short", func(f *v1.FalCredential) { f.Spec.Token.TTL = metav1.Duration{Duration: 5 * time.Second} },
			[]string{"spec.token.ttl", "between 10s and 1h"}},
		{"token ttl too long", func(f *v1.FalCredential) { f.Spec.Token.TTL = metav1.Duration{Duration: 2 * time.Hour} },
			[]string{"spec.token.ttl", "between 10s and 1h"}},
		{"body cap too large", func(f *v1.FalCredential) { f.Spec.Proxy.MaxRequestBytes = q("2Gi") },
			[]string{"spec.proxy.maxRequestBytes", "between 1Ki and 1Gi"}},
		{"body cap too small", func(f *v1.FalCredential) { f.Spec.Proxy.MaxRequestBytes = q("10") },
			[]string{"spec.proxy.maxRequestBytes"}},
		{"negative rate", func(f *v1.FalCredential) { f.Spec.Proxy.RequestsPerSecond = -1 },
			[]string{"spec.proxy.requestsPerSecond"}},
		{"burst below rate", func(f *v1.FalCredential) { f.Spec.Proxy.RequestsPerSecond = 50; f.Spec.Proxy.Burst = 10 },
			[]string{"spec.proxy", "burst must be at least"}},
		{"origin with path", func(f *v1.FalCredential) { f.Spec.Proxy.AllowedOrigins = []string{"https://shop.example.com/app"} },
			[]string{"spec.proxy.allowedOrigins[0]"}},
		{"wildcard origin", func(f *v1.FalCredential) { f.Spec.Proxy.AllowedOrigins = []string{"*"} },
			[]string{"spec.proxy.allowedOrigins[0]"}},
		{"rotation too frequent", func(f *v1.FalCredential) { f.Spec.Rotation = rotation(30*time.Second, 10*time.Second) },
			[]string{"spec.rotation.every", "at least 1m"}},
		{"grace not shorter than every", func(f *v1.FalCredential) { f.Spec.Rotation = rotation(time.Hour, 2*time.Hour) },
			[]string{"spec.rotation", "gracePeriod must be shorter than rotation.every"}},
		{"negative grace", func(f *v1.FalCredential) { f.Spec.Rotation = rotation(time.Hour, -time.Minute) },
			[]string{"spec.rotation.gracePeriod", "must not be negative"}},
		{"rotation without admin secret name", func(f *v1.FalCredential) {
			f.Spec.Rotation = rotation(time.Hour, time.Minute)
			f.Spec.Rotation.AdminSecretRef.Name = ""
		}, []string{"spec.rotation.adminSecretRef.name"}},
		{"secret name not a DNS name", func(f *v1.FalCredential) { f.Spec.SecretRef.Name = "Fal_Key" },
			[]string{"spec.secretRef.name"}},
		{"name too long for a label", func(f *v1.FalCredential) { f.Name = strings.Repeat("a", 64) },
			[]string{"metadata.name must be at most 63 characters"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fc := valid()
			tc.mutate(fc)
			err := k8s.Create(ctx(t), fc)
			if err == nil {
				_ = k8s.Delete(ctx(t), fc)
				t.Fatalf("accepted, want a rejection mentioning %q", tc.want)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestRotationMayCreateTheFirstKey(t *testing.T) {
	namespace(t, "rotation-only")
	fc := &v1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Name: "rotated", Namespace: "rotation-only"},
		Spec: v1.FalCredentialSpec{
			AllowedApps: []string{"fal-ai/fast-lcm-diffusion"},
			Rotation: &v1.RotationSpec{
				AdminSecretRef: v1.SecretKeySelector{Name: "admin"},
				Every:          metav1.Duration{Duration: time.Minute},
				GracePeriod:    metav1.Duration{Duration: 30 * time.Second},
			},
		},
	}
	if err := k8s.Create(ctx(t), fc); err != nil {
		t.Fatalf("a credential whose first key comes from rotation was rejected: %v", err)
	}
}

func TestStatusOnlyThroughSubresource(t *testing.T) {
	namespace(t, "status")
	fc := &v1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "status"},
		Spec: v1.FalCredentialSpec{
			SecretRef:   &v1.SecretKeySelector{Name: "k"},
			AllowedApps: []string{"fal-ai/flux/*"},
		},
	}
	if err := k8s.Create(ctx(t), fc); err != nil {
		t.Fatal(err)
	}
	// A status set through the main resource is dropped by the API server.
	fc.Status.KeyID = "from-main-resource"
	fc.Spec.AllowedApps = []string{"fal-ai/flux/*", "fal-ai/sdxl"}
	if err := k8s.Update(ctx(t), fc); err != nil {
		t.Fatal(err)
	}
	got := &v1.FalCredential{}
	if err := k8s.Get(ctx(t), client.ObjectKeyFromObject(fc), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.KeyID != "" {
		t.Fatalf("status written through the main resource: keyID=%q", got.Status.KeyID)
	}
	if len(got.Spec.AllowedApps) != 2 {
		t.Fatalf("spec update lost: %v", got.Spec.AllowedApps)
	}
	// Through the subresource it sticks, and the spec is not touched.
	got.Status.KeyID = "abc123"
	got.Status.Pods = 3
	got.Spec.AllowedApps = []string{"x/y"}
	if err := k8s.Status().Update(ctx(t), got); err != nil {
		t.Fatal(err)
	}
	again := &v1.FalCredential{}
	if err := k8s.Get(ctx(t), client.ObjectKeyFromObject(fc), again); err != nil {
		t.Fatal(err)
	}
	if again.Status.KeyID != "abc123" || again.Status.Pods != 3 {
		t.Fatalf("status not written through the subresource: %+v", again.Status)
	}
	if len(again.Spec.AllowedApps) != 2 {
		t.Fatalf("status update changed the spec: %v", again.Spec.AllowedApps)
	}
}

func TestPrinterColumnsAndShortName(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "config", "crd", "bases", "falguard.dev_falcredentials.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := string(data)
	for _, want := range []string{"- falcred", "name: Ready", "name: Key ID", "name: Apps", "name: Pods", "name: Last Rotation", "name: Age", "subresources:\n      status: {}"} {
		if !strings.Contains(crd, want) {
			t.Errorf("generated CRD lacks %q", want)
		}
	}
}
