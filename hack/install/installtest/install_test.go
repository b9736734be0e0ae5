//go:build installtest

package installtest

import (
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

var fakeCA = []byte("-----BEGIN CERTIFICATE-----\nfalguard-installtest\n-----END CERTIFICATE-----\n")

// TestKubectlApplyInstall applies dist/install.yaml with kubectl's server-side
// apply, as the docs tell users to, then reads everything back.
func TestKubectlApplyInstall(t *testing.T) {
	t.Parallel()
	k := startCluster(t)
	kubectl := toolPath(t, "KUBECTL")
	manifest := toolPath(t, "INSTALL_YAML")
	apply := func() string {
		out, errOut, err := run(t, []string{"KUBECONFIG=" + k.kubeconfig}, kubectl, "apply", "--server-side", "-f", manifest)
		if err != nil {
			t.Fatalf("kubectl apply --server-side -f dist/install.yaml: %v\n%s%s", err, out, errOut)
		}
		return out
	}
	apply()

	k.waitCRDEstablished(t)
	w := as[admissionv1.MutatingWebhookConfiguration](t, k.get(t, "admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", "falguard-mutating-webhook"))
	checkWebhook(t, w, admissionv1.Fail, namespace, "falguard-webhook-service")
	d := as[appsv1.Deployment](t, k.get(t, "apps/v1", "Deployment", namespace, "falguard-controller-manager"))
	checkDeployment(t, d, deploymentWant{
		replicas: 2, selfManagedCerts: true,
		webhookConfigName: "falguard-mutating-webhook", webhookServiceName: "falguard-webhook-service",
		sidecarImage: "ghcr.io/falguard/falguard-sidecar:",
	})
	ns := k.get(t, "v1", "Namespace", "", namespace)
	if ns == nil || ns.GetLabels()["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace %s should enforce the restricted Pod Security Standard", namespace)
	}
	for _, o := range []struct{ apiVersion, kind, ns, name string }{
		{"v1", "Service", namespace, "falguard-webhook-service"},
		{"v1", "Service", namespace, "falguard-controller-manager-metrics-service"},
		{"policy/v1", "PodDisruptionBudget", namespace, "falguard-controller-manager"},
		{"v1", "ServiceAccount", namespace, "falguard-controller-manager"},
	} {
		if k.get(t, o.apiVersion, o.kind, o.ns, o.name) == nil {
			t.Errorf("%s %s/%s missing", o.kind, o.ns, o.name)
		}
	}
	k.checkManagerRBAC(t, namespace, "falguard-controller-manager")
	k.checkAdmission(t, d, admissionv1.Fail)
	k.createFalCredential(t, "shop", "realtime")

	// Re-applying after the manager wrote its caBundle keeps the caBundle:
	// server-side apply leaves fields another manager owns alone.
	k.setCABundle(t, "falguard-mutating-webhook", fakeCA)
	out := apply()
	if got := k.caBundle(t, "falguard-mutating-webhook"); got != encodeB64(fakeCA) {
		t.Errorf("re-applying install.yaml changed the manager's caBundle to %q", got)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasSuffix(line, "serverside-applied") {
			t.Errorf("unexpected kubectl output on re-apply: %q", line)
		}
	}
}

// TestHelmLifecycle installs, upgrades and uninstalls the chart on a real API
// server and checks what stays behind.
func TestHelmLifecycle(t *testing.T) {
	t.Parallel()
	k := startCluster(t)
	h := func(args ...string) string { return helm(t, k.kubeconfig, args...) }

	h("install", release, chartDir, "--namespace", namespace, "--create-namespace", "--wait=false")
	k.waitCRDEstablished(t)
	w := as[admissionv1.MutatingWebhookConfiguration](t, k.get(t, "admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", "falguard-mutating-webhook"))
	checkWebhook(t, w, admissionv1.Fail, namespace, "falguard-webhook-service")
	d := as[appsv1.Deployment](t, k.get(t, "apps/v1", "Deployment", namespace, "falguard-controller-manager"))
	checkDeployment(t, d, deploymentWant{
		replicas: 2, selfManagedCerts: true,
		webhookConfigName: "falguard-mutating-webhook", webhookServiceName: "falguard-webhook-service",
		sidecarImage: "ghcr.io/falguard/falguard-sidecar:",
	})
	k.checkManagerRBAC(t, namespace, "falguard-controller-manager")
	k.checkAdmission(t, d, admissionv1.Fail)
	// The live ClusterRole carries exactly the rules generated from markers.
	live := as[rbacv1.ClusterRole](t, k.get(t, "rbac.authorization.k8s.io/v1", "ClusterRole", "", "falguard-manager-role"))
	generated := as[rbacv1.ClusterRole](t, installYAML(t).find("ClusterRole", "falguard-manager-role"))
	if !slices.EqualFunc(live.Rules, generated.Rules, func(a, b rbacv1.PolicyRule) bool { return a.String() == b.String() }) {
		t.Errorf("installed ClusterRole rules differ from config/rbac/role.yaml\n live: %v\n want: %v", live.Rules, generated.Rules)
	}
	notes := h("status", release, "--namespace", namespace)
	if !strings.Contains(notes, "falguard.dev/inject: realtime") {
		t.Errorf("NOTES do not show how to annotate a pod:\n%s", notes)
	}
	k.createFalCredential(t, "shop", "realtime")

	// Upgrade: the changed values take effect, and the caBundle the manager
	// wrote survives (Helm's three-way merge leaves fields it never set).
	k.setCABundle(t, "falguard-mutating-webhook", fakeCA)
	h("upgrade", release, chartDir, "--namespace", namespace, "--wait=false",
		"--set", "webhook.failurePolicy=Ignore", "--set", "replicaCount=3")
	w = as[admissionv1.MutatingWebhookConfiguration](t, k.get(t, "admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", "falguard-mutating-webhook"))
	checkWebhook(t, w, admissionv1.Ignore, namespace, "falguard-webhook-service")
	if got := k.caBundle(t, "falguard-mutating-webhook"); got != encodeB64(fakeCA) {
		t.Errorf("helm upgrade changed the manager's caBundle to %q", got)
	}
	d = as[appsv1.Deployment](t, k.get(t, "apps/v1", "Deployment", namespace, "falguard-controller-manager"))
	if *d.Spec.Replicas != 3 {
		t.Errorf("replicas after upgrade = %d, want 3", *d.Spec.Replicas)
	}
	k.checkAdmission(t, d, admissionv1.Ignore)

	// Uninstall removes every object of the release; the CRD, the
	// FalCredentials and the namespace (Helm never deletes it) stay, as the
	// chart README says.
	manifest, err := parseYAML([]byte(h("get", "manifest", release, "--namespace", namespace)))
	if err != nil || len(manifest) == 0 {
		t.Fatalf("helm get manifest: %v (%d objects)", err, len(manifest))
	}
	h("uninstall", release, "--namespace", namespace, "--wait")
	for _, u := range manifest {
		if got := k.get(t, u.GetAPIVersion(), u.GetKind(), u.GetNamespace(), u.GetName()); got != nil {
			t.Errorf("%s is left after helm uninstall", key(u))
		}
	}
	if k.get(t, "apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "falcredentials.falguard.dev") == nil {
		t.Error("helm uninstall deleted the CRD (and with it every FalCredential)")
	}
	if !k.falCredentialExists(t, "shop", "realtime") {
		t.Error("helm uninstall deleted a FalCredential")
	}
	secrets := &unstructured.UnstructuredList{}
	secrets.SetAPIVersion("v1")
	secrets.SetKind("SecretList")
	if err := k.c.List(ctx(t), secrets); err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		if s.GetLabels()["owner"] == "helm" && s.GetLabels()["name"] == release {
			t.Errorf("helm release record %s/%s left after uninstall", s.GetNamespace(), s.GetName())
		}
	}

	// crds.templated: refused while the CRD is not the release's, with the
	// fix in the message; after adopting it, upgrades own the CRD and
	// uninstall keeps it.
	_, errOut, err := run(t, helmEnv(t, k.kubeconfig), toolPath(t, "HELM"),
		"install", release, chartDir, "--namespace", namespace, "--wait=false", "--set", "crds.templated=true", "--skip-crds")
	if err == nil || !strings.Contains(errOut, "already exists outside this release") || !strings.Contains(errOut, "kubectl label crd falcredentials.falguard.dev app.kubernetes.io/managed-by=Helm") {
		t.Fatalf("templated CRDs over an unowned CRD: err %v, want the adoption hint:\n%s", err, errOut)
	}
	kubectl := toolPath(t, "KUBECTL")
	for _, args := range [][]string{
		{"label", "crd", "falcredentials.falguard.dev", "app.kubernetes.io/managed-by=Helm"},
		{"annotate", "crd", "falcredentials.falguard.dev", "meta.helm.sh/release-name=" + release, "meta.helm.sh/release-namespace=" + namespace},
	} {
		if out, errOut, err := run(t, []string{"KUBECONFIG=" + k.kubeconfig}, kubectl, args...); err != nil {
			t.Fatalf("kubectl %v: %v\n%s%s", args, err, out, errOut)
		}
	}
	h("install", release, chartDir, "--namespace", namespace, "--wait=false", "--set", "crds.templated=true", "--skip-crds")
	crd := k.get(t, "apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "falcredentials.falguard.dev")
	if crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" || crd.GetLabels()["helm.sh/chart"] == "" {
		t.Errorf("templated CRD not managed by the release: labels %v annotations %v", crd.GetLabels(), crd.GetAnnotations())
	}
	h("uninstall", release, "--namespace", namespace, "--wait")
	if k.get(t, "apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "falcredentials.falguard.dev") == nil || !k.falCredentialExists(t, "shop", "realtime") {
		t.Error("uninstall with crds.keep=true removed the CRD or the FalCredentials")
	}
}
