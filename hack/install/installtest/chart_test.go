//go:build installtest

package installtest

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/diff"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/internal/inject"
)

// allToggles turns on every optional feature of the chart at once.
var allToggles = []string{
	"--set", "certs.mode=cert-manager",
	"--set", "metrics.serviceMonitor.enabled=true",
	"--set", "sidecarPodMonitor.enabled=true",
	"--set", "prometheusRule.enabled=true",
	"--set", "grafanaDashboard.enabled=true",
	"--set", "networkPolicy.enabled=true",
	"--set", "crds.templated=true",
	"--set", "priorityClassName=system-cluster-critical",
	"--set", "webhook.failurePolicy=Ignore",
	"--set", "replicaCount=3",
	"--set", "nodeSelector.kubernetes\\.io/os=linux",
	"--set-json", `tolerations=[{"key":"dedicated","operator":"Equal","value":"ops","effect":"NoSchedule"}]`,
	"--set-json", `affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/arch","operator":"In","values":["amd64","arm64"]}]}]}}}`,
	"--set-json", `webhook.namespaceSelector={"matchLabels":{"falguard.dev/enabled":"true"}}`,
	"--set-json", `sidecar.env={"FALGUARD_LOG_LEVEL":"debug"}`,
	"--set", "sidecar.image.digest=sha256:" + strings.Repeat("ab", 32),
	"--set", "image.tag=v9.9.9",
	"--set", "sidecar.resources.requests.cpu=50m",
	"--set", "sidecar.resources.limits.cpu=1",
	"--set", "sidecar.resources.requests.memory=32Mi",
	"--set", "sidecar.resources.limits.memory=",
	"--set", "sidecar.ports.proxy=5750",
	"--set", "sidecar.ports.ops=5751",
}

func TestHelmLint(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"defaults", nil},
		{"every toggle on", allToggles},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := helm(t, "", append([]string{"lint", "--strict", chartDir}, tc.args...)...)
			if strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
				t.Errorf("helm lint is not clean:\n%s", out)
			}
		})
	}
}

func TestTemplateDefaults(t *testing.T) {
	objs := render(t)
	d := as[appsv1.Deployment](t, objs.find("Deployment", "falguard-controller-manager"))
	checkDeployment(t, d, deploymentWant{
		replicas: 2, selfManagedCerts: true,
		webhookConfigName: "falguard-mutating-webhook", webhookServiceName: "falguard-webhook-service",
		sidecarImage: "ghcr.io/falguard/falguard-sidecar:",
	})
	w := as[admissionv1.MutatingWebhookConfiguration](t, objs.one(t, "MutatingWebhookConfiguration"))
	checkWebhook(t, w, admissionv1.Fail, namespace, "falguard-webhook-service")
	if _, ok := w.Annotations["cert-manager.io/inject-ca-from"]; ok {
		t.Error("self-managed certs must not carry cert-manager's inject annotation")
	}
	if objs.find("PodDisruptionBudget", "falguard-controller-manager") == nil {
		t.Error("no PodDisruptionBudget with 2 replicas")
	}
	for _, kind := range []string{"CustomResourceDefinition", "Certificate", "Issuer", "ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"} {
		if n := len(objs.ofKind(kind)); n != 0 {
			t.Errorf("%d %s rendered with default values, want none", n, kind)
		}
	}
	if d.Spec.Template.Spec.PriorityClassName != "" || d.Spec.Template.Spec.NodeSelector != nil || d.Spec.Template.Spec.Tolerations != nil {
		t.Error("priorityClassName, nodeSelector or tolerations set without being asked for")
	}
	if aff := d.Spec.Template.Spec.Affinity; aff == nil || aff.PodAntiAffinity == nil {
		t.Error("default affinity should spread the replicas across nodes")
	}
	for _, u := range objs {
		if u.GetNamespace() != "" && u.GetNamespace() != namespace {
			t.Errorf("%s is outside the release namespace", key(u))
		}
	}
}

func TestTemplateEveryToggle(t *testing.T) {
	objs := render(t, allToggles...)
	d := as[appsv1.Deployment](t, objs.find("Deployment", "falguard-controller-manager"))
	checkDeployment(t, d, deploymentWant{
		replicas: 3, selfManagedCerts: false,
		webhookConfigName: "falguard-mutating-webhook", webhookServiceName: "falguard-webhook-service",
		sidecarImage: "ghcr.io/falguard/falguard-sidecar@sha256:abab",
		// An empty memory limit is passed as "0": none, not the built-in 64Mi.
		sidecarDefaults: map[string]string{
			"--sidecar-cpu-request": "50m", "--sidecar-cpu-limit": "1",
			"--sidecar-memory-request": "32Mi", "--sidecar-memory-limit": "0",
			"--sidecar-proxy-port": "5750", "--sidecar-ops-port": "5751",
		},
	})
	pod := d.Spec.Template.Spec
	if pod.PriorityClassName != "system-cluster-critical" {
		t.Errorf("priorityClassName %q", pod.PriorityClassName)
	}
	if pod.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("nodeSelector %v", pod.NodeSelector)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Key != "dedicated" {
		t.Errorf("tolerations %v", pod.Tolerations)
	}
	if pod.Affinity == nil || pod.Affinity.NodeAffinity == nil || pod.Affinity.PodAntiAffinity != nil {
		t.Errorf("affinity %+v: want the given node affinity in place of the default", pod.Affinity)
	}
	if img := pod.Containers[0].Image; img != "ghcr.io/falguard/falguard-manager:v9.9.9" {
		t.Errorf("manager image %q", img)
	}
	if args := argMap(pod.Containers[0].Args); !slices.Contains(pod.Containers[0].Args, "--sidecar-env=FALGUARD_LOG_LEVEL=debug") {
		t.Errorf("sidecar env not passed to the manager: %v", args)
	}

	w := as[admissionv1.MutatingWebhookConfiguration](t, objs.one(t, "MutatingWebhookConfiguration"))
	checkWebhook(t, w, admissionv1.Ignore, namespace, "falguard-webhook-service")
	if got := w.Annotations["cert-manager.io/inject-ca-from"]; got != namespace+"/falguard-serving-cert" {
		t.Errorf("cert-manager inject annotation %q, want %s/falguard-serving-cert", got, namespace)
	}
	if ml := w.Webhooks[0].NamespaceSelector.MatchLabels; ml["falguard.dev/enabled"] != "true" {
		t.Errorf("namespaceSelector lost the user's matchLabels: %+v", w.Webhooks[0].NamespaceSelector)
	}

	cert := objs.find("Certificate", "falguard-serving-cert")
	if cert == nil {
		t.Fatal("no serving Certificate in cert-manager mode")
	}
	secretName, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	if !slices.Contains(dns, "falguard-webhook-service.falguard-system.svc") {
		t.Errorf("certificate dnsNames %v lack the webhook Service", dns)
	}
	var mountedSecret string
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			mountedSecret = v.Secret.SecretName
		}
	}
	if mountedSecret != secretName {
		t.Errorf("the Deployment mounts Secret %q, the Certificate writes %q", mountedSecret, secretName)
	}
	if len(objs.ofKind("Issuer")) != 2 {
		t.Errorf("want the self-signed and CA Issuers, got %v", objs.ofKind("Issuer").keys())
	}

	np := as[networkingv1.NetworkPolicy](t, objs.one(t, "NetworkPolicy"))
	var ports []int
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			ports = append(ports, p.Port.IntValue())
		}
	}
	if !slices.Equal(ports, []int{9443, 8080}) {
		t.Errorf("NetworkPolicy opens ports %v, want the webhook 9443 and metrics 8080", ports)
	}
	for _, kind := range []string{"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} {
		objs.one(t, kind) // the optional monitoring objects, one each
	}
	checkMonitors(t, objs)
	crd := objs.one(t, "CustomResourceDefinition")
	if crd.GetName() != "falcredentials.falguard.dev" || crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Errorf("templated CRD %s annotations %v: want falcredentials.falguard.dev kept on uninstall", crd.GetName(), crd.GetAnnotations())
	}
	pdb := as[policyv1.PodDisruptionBudget](t, objs.one(t, "PodDisruptionBudget"))
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDB minAvailable %v", pdb.Spec.MinAvailable)
	}
}

// checkMonitors: the manager's ServiceMonitor keeps the metrics' own namespace
// label (the alerts group by it), and the PodMonitor finds every injected
// pod's sidecar wherever it runs.
func checkMonitors(t *testing.T, objs objects) {
	t.Helper()
	sm := objs.one(t, "ServiceMonitor")
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor endpoints %v, want one", eps)
	}
	if honor, _ := eps[0].(map[string]any)["honorLabels"].(bool); !honor {
		t.Errorf("ServiceMonitor endpoint %v lacks honorLabels: true; the per-credential metrics would lose the credential's namespace to exported_namespace", eps[0])
	}

	pm := objs.one(t, "PodMonitor")
	if pm.GetName() != "falguard-sidecars" || pm.GetNamespace() != namespace {
		t.Errorf("PodMonitor %s, want %s/falguard-sidecars", key(pm), namespace)
	}
	if anyNS, _, _ := unstructured.NestedBool(pm.Object, "spec", "namespaceSelector", "any"); !anyNS {
		t.Error("PodMonitor does not look in every namespace; injected pods run in the apps' namespaces")
	}
	exprs, _, _ := unstructured.NestedSlice(pm.Object, "spec", "selector", "matchExpressions")
	want := []any{map[string]any{"key": falguardv1alpha1.LabelCredential, "operator": "Exists"}}
	if !reflect.DeepEqual(exprs, want) {
		t.Errorf("PodMonitor selects %v, want %v (the label the webhook puts on injected pods)", exprs, want)
	}
	pme, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	if len(pme) != 1 {
		t.Fatalf("PodMonitor endpoints %v, want one", pme)
	}
	ep := pme[0].(map[string]any)
	if ep["port"] != inject.OpsPortName || ep["path"] != "/metrics" || ep["interval"] != "30s" {
		t.Errorf("PodMonitor endpoint %v, want port %s (the sidecar's), path /metrics, interval 30s", ep, inject.OpsPortName)
	}
}

func TestTemplateSingleReplicaHasNoPDB(t *testing.T) {
	objs := render(t, "--set", "replicaCount=1")
	if n := len(objs.ofKind("PodDisruptionBudget")); n != 0 {
		t.Errorf("a PDB with minAvailable 1 over 1 replica would block every node drain; rendered %d", n)
	}
}

// TestSchemaRejectsBadValues: each bad value fails `helm template` (and so
// install and upgrade) with a message naming the value.
func TestSchemaRejectsBadValues(t *testing.T) {
	// templateOnly marks checks made by the templates (`fail`), which helm
	// lint does not run; the schema's are checked by lint too.
	const templateOnly = true
	tests := []struct {
		name         string
		args         []string
		want         string
		templateOnly bool
	}{
		{"unknown failurePolicy", []string{"--set", "webhook.failurePolicy=Sometimes"}, "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'", false},
		{"misspelled key", []string{"--set", "webhook.failurepolicy=Fail"}, "additional properties 'failurepolicy' not allowed", false},
		{"unknown top-level key", []string{"--set", "replicas=3"}, "additional properties 'replicas' not allowed", false},
		{"zero replicas", []string{"--set", "replicaCount=0"}, "at '/replicaCount': minimum: got 0, want 1", false},
		{"replicas as text", []string{"--set-string", "replicaCount=two"}, "at '/replicaCount': got string, want integer", false},
		{"bad pull policy", []string{"--set", "image.pullPolicy=Sometimes"}, "at '/image/pullPolicy': value must be one of", false},
		{"bad digest", []string{"--set", "image.digest=md5:abc"}, "at '/image/digest'", false},
		{"empty repository", []string{"--set", "image.repository="}, "at '/image/repository'", false},
		{"unknown cert mode", []string{"--set", "certs.mode=vault"}, "at '/certs/mode': value must be one of 'self-managed', 'cert-manager'", false},
		{"issuerRef without name", []string{"--set", "certs.certManager.issuerRef.kind=ClusterIssuer"}, "at '/certs/certManager/issuerRef': missing property 'name'", false},
		{"bad issuer kind", []string{"--set", "certs.certManager.issuerRef.name=x", "--set", "certs.certManager.issuerRef.kind=Vault"}, "at '/certs/certManager/issuerRef/kind'", false},
		{"bad duration", []string{"--set", "certs.certManager.duration=90days"}, "at '/certs/certManager/duration'", false},
		{"bad PodMonitor interval", []string{"--set", "sidecarPodMonitor.interval=often"}, "at '/sidecarPodMonitor/interval'", false},
		{"PodMonitor typo", []string{"--set", "sidecarPodMonitor.enable=true"}, "additional properties 'enable' not allowed", false},
		{"webhook timeout too long", []string{"--set", "webhook.timeoutSeconds=31"}, "at '/webhook/timeoutSeconds': maximum: got 31, want 30", false},
		{"port out of range", []string{"--set", "webhook.port=70000"}, "at '/webhook/port': maximum", false},
		{"webhook and metrics ports clash", []string{"--set", "metrics.port=9443"}, "must differ from each other and from the health port 8081", templateOnly},
		{"bad sidecar cpu quantity", []string{"--set", "sidecar.resources.requests.cpu=lots"}, "at '/sidecar/resources/requests/cpu': 'lots' does not match pattern", false},
		{"negative sidecar memory limit", []string{"--set", "sidecar.resources.limits.memory=-1"}, "at '/sidecar/resources/limits/memory': minimum: got -1, want 0", false},
		{"sidecar resources typo", []string{"--set", "sidecar.resources.request.cpu=1"}, "additional properties 'request' not allowed", false},
		{"privileged sidecar port", []string{"--set", "sidecar.ports.proxy=80"}, "at '/sidecar/ports/proxy': minimum: got 80, want 1,024", false},
		{"sidecar port out of range", []string{"--set", "sidecar.ports.ops=70000"}, "at '/sidecar/ports/ops': maximum", false},
		{"sidecar ports clash", []string{"--set", "sidecar.ports.ops=4750"}, "sidecar.ports.proxy and sidecar.ports.ops are both 4750", templateOnly},
		{"bad env name", []string{"--set", "sidecar.env.1BAD=x"}, "'1BAD' does not match pattern", false},
		{"bad log level", []string{"--set", "logLevel=verbose"}, "at '/logLevel': value must be one of 'debug', 'info', 'error'", false},
		{"bad cpu quantity", []string{"--set", "resources.requests.cpu=lots"}, "at '/resources/requests/cpu'", false},
		{"namespaceSelector typo", []string{"--set-json", `webhook.namespaceSelector={"matchLabel":{"a":"b"}}`}, "additional properties 'matchLabel' not allowed", false},
		{"extraArgs not a flag", []string{"--set-json", `extraArgs=["leader-elect"]`}, "at '/extraArgs/0'", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"template", release, chartDir, "--namespace", namespace}, tc.args...)
			_, errOut, err := run(t, helmEnv(t, ""), toolPath(t, "HELM"), args...)
			if err == nil {
				t.Fatalf("helm template accepted %v", tc.args)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("error does not say %q:\n%s", tc.want, errOut)
			}
			if tc.templateOnly {
				return
			}
			// helm lint reports the same problem.
			lintArgs := append([]string{"lint", chartDir}, tc.args...)
			out, _, err := run(t, helmEnv(t, ""), toolPath(t, "HELM"), lintArgs...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("helm lint: err %v, output lacks %q:\n%s", err, tc.want, out)
			}
		})
	}
}

// installYAML reads dist/install.yaml, built by `make build-installer`.
func installYAML(t *testing.T) objects {
	t.Helper()
	b, err := os.ReadFile(toolPath(t, "INSTALL_YAML"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := parseYAML(b)
	if err != nil {
		t.Fatalf("dist/install.yaml does not parse: %v", err)
	}
	return objs
}

// TestChartMatchesInstallYAML: a Helm release named "falguard" and
// dist/install.yaml create the same objects with the same webhook, RBAC and
// manager settings, so neither path drifts from the other.
func TestChartMatchesInstallYAML(t *testing.T) {
	chart, manifests := render(t), installYAML(t)

	// Same objects, by kind and name. The Namespace is created by
	// `helm install --create-namespace`, not by the chart.
	var want []string
	for _, u := range manifests {
		if u.GetKind() != "Namespace" && u.GetKind() != "CustomResourceDefinition" {
			want = append(want, key(u))
		}
	}
	got := chart.keys()
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("objects differ\n chart:        %v\n install.yaml: %v", got, want)
	}

	// The webhook, field by field (the caBundle is the manager's business).
	cw := as[admissionv1.MutatingWebhookConfiguration](t, chart.one(t, "MutatingWebhookConfiguration"))
	mw := as[admissionv1.MutatingWebhookConfiguration](t, manifests.one(t, "MutatingWebhookConfiguration"))
	if !reflect.DeepEqual(cw.Webhooks, mw.Webhooks) {
		t.Errorf("webhooks differ (- chart, + install.yaml):\n%s", diff.Diff(cw.Webhooks, mw.Webhooks))
	}

	// RBAC rules and bindings.
	for _, kind := range []string{"ClusterRole", "Role"} {
		for _, u := range manifests.ofKind(kind) {
			c := chart.find(kind, u.GetName())
			if c == nil {
				continue // reported above
			}
			cr, mr := as[rbacv1.ClusterRole](t, c), as[rbacv1.ClusterRole](t, u)
			if !reflect.DeepEqual(cr.Rules, mr.Rules) {
				t.Errorf("%s %s rules differ (- chart, + install.yaml):\n%s", kind, u.GetName(), diff.Diff(cr.Rules, mr.Rules))
			}
		}
	}
	for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
		for _, u := range manifests.ofKind(kind) {
			c := chart.find(kind, u.GetName())
			if c == nil {
				continue
			}
			cb, mb := as[rbacv1.RoleBinding](t, c), as[rbacv1.RoleBinding](t, u)
			if !reflect.DeepEqual(cb.RoleRef, mb.RoleRef) || !reflect.DeepEqual(cb.Subjects, mb.Subjects) {
				t.Errorf("%s %s differs: chart %+v %+v, install.yaml %+v %+v", kind, u.GetName(), cb.RoleRef, cb.Subjects, mb.RoleRef, mb.Subjects)
			}
		}
	}

	// The manager container, but for image tags.
	cd := as[appsv1.Deployment](t, chart.one(t, "Deployment"))
	md := as[appsv1.Deployment](t, manifests.one(t, "Deployment"))
	cc, mc := cd.Spec.Template.Spec.Containers[0], md.Spec.Template.Spec.Containers[0]
	cc.Image, mc.Image = "", ""
	cc.Args, mc.Args = dropImageTags(cc.Args), dropImageTags(mc.Args)
	if !reflect.DeepEqual(cc, mc) {
		t.Errorf("manager containers differ (- chart, + install.yaml):\n%s", diff.Diff(cc, mc))
	}
	cp, mp := cd.Spec.Template.Spec, md.Spec.Template.Spec
	cp.Containers, mp.Containers = nil, nil
	if !reflect.DeepEqual(cp, mp) {
		t.Errorf("manager pod specs differ (- chart, + install.yaml):\n%s", diff.Diff(cp, mp))
	}
}

func dropImageTags(args []string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		if strings.HasPrefix(a, "--sidecar-image=") {
			a, _, _ = strings.Cut(a, ":")
		}
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// TestServicesSelectTheManager: every Service (the webhook's from
// config/webhook included) selects the manager's pods, in both paths.
func TestServicesSelectTheManager(t *testing.T) {
	for name, objs := range map[string]objects{"chart": render(t), "install.yaml": installYAML(t)} {
		d := as[appsv1.Deployment](t, objs.one(t, "Deployment"))
		for _, u := range objs.ofKind("Service") {
			sel, _, _ := unstructured.NestedStringMap(u.Object, "spec", "selector")
			if len(sel) == 0 {
				t.Errorf("%s: Service %s has no selector", name, u.GetName())
			}
			for k, v := range sel {
				if d.Spec.Template.Labels[k] != v {
					t.Errorf("%s: Service %s selects %s=%s, which the manager pods (%v) lack", name, u.GetName(), k, v, d.Spec.Template.Labels)
				}
			}
		}
	}
}

// TestTemplateLongReleaseName: Helm allows 53-character release names; every
// object name must still be valid (Services and labels: 63 characters).
func TestTemplateLongReleaseName(t *testing.T) {
	long := "payments-platform-production-eu-west-1-falguard-abcd" // 52 characters
	out := helm(t, "", "template", long, chartDir, "--namespace", namespace)
	objs, err := parseYAML([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range objs {
		if n := len(u.GetName()); n > 63 {
			t.Errorf("%s: name is %d characters, more than 63", key(u), n)
		}
	}
	d := as[appsv1.Deployment](t, objs.one(t, "Deployment"))
	args := argMap(d.Spec.Template.Spec.Containers[0].Args)
	if objs.find("MutatingWebhookConfiguration", args["--webhook-config-name"]) == nil || objs.find("Service", args["--webhook-service-name"]) == nil {
		t.Errorf("the manager's --webhook-config-name/--webhook-service-name (%s, %s) name no rendered object", args["--webhook-config-name"], args["--webhook-service-name"])
	}
}
