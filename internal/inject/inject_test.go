package inject

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// -update rewrites the expected fixtures from the current output; review the
// diff before committing it.
var update = flag.Bool("update", false, "rewrite testdata expectations")

// goldenCases: testdata/<name>.in.yaml is the pod as submitted; either
// <name>.out.yaml is the pod expected back, or <name>.denied.txt the denial.
// FalCredentials "realtime" and "batch" exist in namespace "shop".
var goldenCases = []struct {
	name string
	cfg  func(*Config)
	why  string
}{
	{name: "not-annotated", why: "pods that did not ask are never touched"},
	{name: "bare-pod", why: "native sidecar, env, volume, label, status"},
	{name: "second-pass", why: "an injected pod comes back unchanged"},
	{name: "reinvocation-new-container", why: "a container added by a later webhook gets the env; nothing else changes"},
	{name: "existing-init-containers", why: "sidecar appended after the pod's own init containers"},
	{name: "istio", why: "istio-init still first, istio-proxy untouched, our sidecar last"},
	{name: "env-precedence", why: "values the pod sets win; only missing ones are added"},
	{name: "overrides", why: "image, resources, ports and log level from annotations"},
	{name: "resources-removed", why: `"0" removes a default resource`},
	{name: "legacy-job", why: "native-sidecar=false: regular container plus the quit URL for Jobs"},
	{name: "manager-config", why: "--sidecar-env, --sidecar-image-pull-policy; annotation log level beats the flag's", cfg: func(c *Config) {
		c.PullPolicy = corev1.PullIfNotPresent
		c.Env = []corev1.EnvVar{
			{Name: "FALGUARD_UPSTREAM_OVERRIDE", Value: "https://fal.run=https://127.0.0.1:9443"},
			{Name: "FALGUARD_LOG_LEVEL", Value: "warn"},
		}
	}},
	{name: "manager-defaults", why: "--sidecar-{cpu,memory}-{request,limit} and --sidecar-{proxy,ops}-port replace the built-in defaults; the app's port 4750 no longer clashes", cfg: managerDefaults},
	{name: "manager-defaults-annotation-override", why: "annotations still win over the manager's defaults, one by one", cfg: managerDefaults},
	{name: "deny-request-above-manager-limit", why: "an annotated request is checked against the manager's default limit", cfg: managerDefaults},
	{name: "deny-port-on-manager-default", why: "an annotated port may not land on the manager's default for the other listener", cfg: managerDefaults},
	{name: "deny-unknown-credential"},
	{name: "deny-hostnetwork"},
	{name: "deny-shareprocessnamespace"},
	{name: "deny-port-clash"},
	{name: "deny-port-clash-init-container"},
	{name: "deny-port-clash-moved-port"},
	{name: "deny-reserved-container-name"},
	{name: "deny-reserved-volume-name"},
	{name: "deny-bad-credential-name"},
	{name: "deny-bad-native-sidecar"},
	{name: "deny-bad-image"},
	{name: "deny-bad-memory-limit"},
	{name: "deny-request-above-limit"},
	{name: "deny-bad-port"},
	{name: "deny-privileged-port"},
	{name: "deny-same-ports"},
	{name: "deny-bad-log-level"},
	{name: "deny-unknown-sidecar-annotation"},
}

// managerDefaults is a platform team's cluster-wide sidecar defaults.
func managerDefaults(c *Config) {
	c.Resources = &corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("32Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("500m"),
			corev1.ResourceMemory: resource.MustParse("128Mi"),
		},
	}
	c.ProxyPort, c.OpsPort = 5750, 5751
}

var existingCredentials = map[string]bool{"realtime": true, "batch": true}

func testConfig() Config {
	return Config{Image: "ghcr.io/falguard/falguard-sidecar:v0.1.0"}
}

func TestInjectGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			base := filepath.Join("testdata", tc.name)
			in := readPod(t, base+".in.yaml")
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			name, _ := CredentialName(in)
			got, err := Inject(in, Credential{Namespace: "shop", Exists: existingCredentials[name]}, cfg)

			if strings.HasPrefix(tc.name, "deny-") {
				if err == nil {
					t.Fatalf("want a denial, got an allowed pod")
				}
				var d *Denial
				if !errors.As(err, &d) {
					t.Fatalf("want *Denial, got %T: %v", err, err)
				}
				compareGolden(t, base+".denied.txt", []byte(d.Message+"\n"))
				return
			}
			if err != nil {
				t.Fatalf("unexpected denial: %v", err)
			}
			out, err := yaml.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			compareGolden(t, base+".out.yaml", out)

			// Idempotence: the mutated pod passed through again is unchanged.
			again, err := Inject(got, Credential{Namespace: "shop", Exists: true}, cfg)
			if err != nil {
				t.Fatalf("second pass denied: %v", err)
			}
			if !equality.Semantic.DeepEqual(got, again) {
				t.Errorf("second pass changed the pod:\nfirst:  %s\nsecond: %s", mustYAML(t, got), mustYAML(t, again))
			}
		})
	}
}

// TestGoldenFilesAreAllUsed catches a fixture added on disk but not in the table.
func TestGoldenFilesAreAllUsed(t *testing.T) {
	known := map[string]bool{}
	for _, tc := range goldenCases {
		known[tc.name] = true
	}
	files, _ := filepath.Glob("testdata/*.in.yaml")
	for _, f := range files {
		if n := strings.TrimSuffix(filepath.Base(f), ".in.yaml"); !known[n] {
			t.Errorf("%s is not listed in goldenCases", f)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	q := resource.MustParse
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{name: "zero value is the built-in defaults", cfg: Config{}},
		{name: "platform defaults", cfg: func() Config { c := Config{}; managerDefaults(&c); return c }()},
		{name: "no resources at all", cfg: Config{Resources: &corev1.ResourceRequirements{}}},
		{name: "swapped default ports", cfg: Config{ProxyPort: 4751, OpsPort: 4750}},
		{name: "cpu request above limit",
			cfg:  Config{Resources: &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: q("2")}, Limits: corev1.ResourceList{corev1.ResourceCPU: q("1")}}},
			want: "--sidecar-cpu-request=2 is above --sidecar-cpu-limit=1"},
		{name: "memory request above the built-in limit's replacement",
			cfg:  Config{Resources: &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: q("1Gi")}, Limits: corev1.ResourceList{corev1.ResourceMemory: q("64Mi")}}},
			want: "--sidecar-memory-request=1Gi is above --sidecar-memory-limit=64Mi"},
		{name: "negative quantity",
			cfg:  Config{Resources: &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: q("-1Mi")}}},
			want: "--sidecar-memory-limit=-1Mi is negative"},
		{name: "privileged proxy port", cfg: Config{ProxyPort: 80}, want: "--sidecar-proxy-port=80 is not a usable port"},
		{name: "ops port too high", cfg: Config{OpsPort: 70000}, want: "--sidecar-ops-port=70000 is not a usable port"},
		{name: "ops port on the default proxy port", cfg: Config{OpsPort: DefaultProxyPort}, want: "--sidecar-proxy-port and --sidecar-ops-port both give port 4750"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("want an error saying %q, got none", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestInjectDoesNotMutateInput(t *testing.T) {
	in := readPod(t, "testdata/bare-pod.in.yaml")
	before := in.DeepCopy()
	if _, err := Inject(in, Credential{Namespace: "shop", Exists: true}, testConfig()); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(in, before) {
		t.Fatalf("Inject modified its input")
	}
}

func TestInjectUsesCredentialSecretName(t *testing.T) {
	in := readPod(t, "testdata/bare-pod.in.yaml")
	got, err := Inject(in, Credential{Namespace: "shop", Exists: true, SecretName: "custom-secret"}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range got.Spec.Volumes {
		if v.Name == VolumeName {
			if v.Secret.SecretName != "custom-secret" {
				t.Fatalf("volume secret = %q, want custom-secret", v.Secret.SecretName)
			}
			return
		}
	}
	t.Fatal("no credentials volume")
}

func readPod(t *testing.T, path string) *corev1.Pod {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var p corev1.Pod
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &p
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/inject -update to create it, then review it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the output:\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

func mustYAML(t *testing.T, v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// BenchmarkInject measures the pure mutation of a typical annotated pod.
func BenchmarkInject(b *testing.B) {
	raw, err := os.ReadFile("testdata/istio.in.yaml")
	if err != nil {
		b.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.Unmarshal(raw, &pod); err != nil {
		b.Fatal(err)
	}
	cred := Credential{Namespace: "shop", Exists: true}
	cfg := testConfig()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Inject(&pod, cred, cfg); err != nil {
			b.Fatal(err)
		}
	}
}
