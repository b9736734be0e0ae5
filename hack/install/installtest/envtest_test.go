//go:build installtest

package installtest

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// cluster is one envtest API server (etcd + kube-apiserver, no controllers,
// no kubelet) with an admin kubeconfig file for helm and kubectl.
type cluster struct {
	kubeconfig string
	c          client.Client
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run this suite with 'make test-install'")
	}
	env := &envtest.Environment{}
	// Resolve webhook Services through their Endpoints, as aggregated APIs
	// are with this flag: there are none here (no kubelet, no manager), so a
	// webhook call fails inside the API server. Without it the API server
	// dials falguard-webhook-service.falguard-system.svc through DNS, which
	// must not leave this machine.
	env.ControlPlane.GetAPIServer().Configure().Set("enable-aggregator-routing", "true")
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stopping envtest: %v", err)
		}
	})
	admin, err := env.AddUser(envtest.User{Name: "installtest-admin", Groups: []string{"system:masters"}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{kubeconfig: path, c: c}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// waitCRDEstablished waits (bounded) for the FalCredential CRD to be served.
func (k *cluster) waitCRDEstablished(t *testing.T) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	crd := &apiextensionsv1.CustomResourceDefinition{}
	err := wait.PollUntilContextTimeout(ctx(t), 200*time.Millisecond, 30*time.Second, true, func(c context.Context) (bool, error) {
		if err := k.c.Get(c, client.ObjectKey{Name: "falcredentials.falguard.dev"}, crd); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		for _, cond := range crd.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD falcredentials.falguard.dev not established: %v (conditions %+v)", err, crd.Status.Conditions)
	}
	return crd
}

var falCredentialGVK = schema.GroupVersionKind{Group: "falguard.dev", Version: "v1alpha1", Kind: "FalCredential"}

// createFalCredential proves the CRD serves the API a user would call.
func (k *cluster) createFalCredential(t *testing.T, ns, name string) {
	t.Helper()
	nsObj := &unstructured.Unstructured{}
	nsObj.SetAPIVersion("v1")
	nsObj.SetKind("Namespace")
	nsObj.SetName(ns)
	if err := k.c.Create(ctx(t), nsObj); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	fc := &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{
			"secretRef":   map[string]any{"name": "fal-api-key", "key": "FAL_KEY"},
			"allowedApps": []any{"fal-ai/fast-lcm-diffusion"},
		},
	}}
	fc.SetGroupVersionKind(falCredentialGVK)
	fc.SetNamespace(ns)
	fc.SetName(name)
	if err := k.c.Create(ctx(t), fc); err != nil {
		t.Fatalf("creating a FalCredential through the installed CRD: %v", err)
	}
}

func (k *cluster) falCredentialExists(t *testing.T, ns, name string) bool {
	t.Helper()
	fc := &unstructured.Unstructured{}
	fc.SetGroupVersionKind(falCredentialGVK)
	err := k.c.Get(ctx(t), client.ObjectKey{Namespace: ns, Name: name}, fc)
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

// access is one question to the API server's authorizer about the manager's
// ServiceAccount.
type access struct {
	verb, group, resource, subresource, namespace string
	allowed                                       bool
	why                                           string
}

// managerAccess is the RBAC the manager must have, and must not have, in
// either install path.
func managerAccess(ns string) []access {
	return []access{
		{"watch", "falguard.dev", "falcredentials", "", "shop", true, "reconciles FalCredentials in every namespace"},
		{"update", "falguard.dev", "falcredentials", "status", "shop", true, "reports status"},
		{"update", "falguard.dev", "falcredentials", "finalizers", "shop", true, "revokes operator-created keys before deletion"},
		{"delete", "falguard.dev", "falcredentials", "", "shop", false, "never deletes a user's FalCredential"},
		{"create", "", "secrets", "", "shop", true, "writes the managed Secret falguard-<name> next to each FalCredential"},
		{"get", "", "secrets", "", "shop", true, "reads the referenced key Secrets"},
		{"list", "", "pods", "", "shop", true, "counts injected pods"},
		{"create", "", "pods", "", "shop", false, "never creates workloads"},
		{"delete", "", "pods", "", "shop", false, "never deletes workloads"},
		{"patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", true, "keeps the webhook caBundle current"},
		{"patch", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "", false, "has no validating webhook"},
		{"create", "", "events", "", "shop", true, "records events"},
		{"update", "coordination.k8s.io", "leases", "", ns, true, "leader election in its own namespace"},
		{"update", "coordination.k8s.io", "leases", "", "kube-system", false, "no leases outside its namespace"},
		{"create", "rbac.authorization.k8s.io", "clusterrolebindings", "", "", false, "cannot grant itself more"},
		{"escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", false, "cannot grant itself more"},
		{"create", "", "namespaces", "", "", false, "no namespaces"},
		{"get", "", "nodes", "", "", false, "no nodes"},
		{"delete", "apiextensions.k8s.io", "customresourcedefinitions", "", "", false, "never touches CRDs"},
		{"create", "", "serviceaccounts", "token", "shop", false, "cannot mint tokens"},
	}
}

// checkManagerRBAC asks the live authorizer (SubjectAccessReview) each question.
func (k *cluster) checkManagerRBAC(t *testing.T, ns, serviceAccount string) {
	t.Helper()
	user := "system:serviceaccount:" + ns + ":" + serviceAccount
	for _, a := range managerAccess(ns) {
		sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource, Namespace: a.namespace,
			},
		}}
		if err := k.c.Create(ctx(t), sar); err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != a.allowed {
			t.Errorf("manager may %s %s/%s %s in %q: %v, want %v (%s)", a.verb, a.group, a.resource, a.subresource, a.namespace, sar.Status.Allowed, a.allowed, a.why)
		}
	}
}

// setCABundle plays the manager: it writes a caBundle into the webhook
// configuration with its own field manager, as the certificate rotator does.
func (k *cluster) setCABundle(t *testing.T, name string, pem []byte) {
	t.Helper()
	w := &unstructured.Unstructured{}
	w.SetAPIVersion("admissionregistration.k8s.io/v1")
	w.SetKind("MutatingWebhookConfiguration")
	if err := k.c.Get(ctx(t), client.ObjectKey{Name: name}, w); err != nil {
		t.Fatal(err)
	}
	hooks, _, _ := unstructured.NestedSlice(w.Object, "webhooks")
	for i := range hooks {
		_ = unstructured.SetNestedField(hooks[i].(map[string]any), encodeB64(pem), "clientConfig", "caBundle")
	}
	_ = unstructured.SetNestedSlice(w.Object, hooks, "webhooks")
	if err := k.c.Update(ctx(t), w, client.FieldOwner("falguard-manager")); err != nil {
		t.Fatal(err)
	}
}

func (k *cluster) caBundle(t *testing.T, name string) string {
	t.Helper()
	w := &unstructured.Unstructured{}
	w.SetAPIVersion("admissionregistration.k8s.io/v1")
	w.SetKind("MutatingWebhookConfiguration")
	if err := k.c.Get(ctx(t), client.ObjectKey{Name: name}, w); err != nil {
		t.Fatal(err)
	}
	hooks, _, _ := unstructured.NestedSlice(w.Object, "webhooks")
	if len(hooks) == 0 {
		return ""
	}
	s, _, _ := unstructured.NestedString(hooks[0].(map[string]any), "clientConfig", "caBundle")
	return s
}

// get reads one live object as unstructured; nil when it does not exist.
func (k *cluster) get(t *testing.T, apiVersion, kind, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	err := k.c.Get(ctx(t), client.ObjectKey{Namespace: ns, Name: name}, u)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("get %s %s/%s: %v", kind, ns, name, err)
	}
	return u
}

func encodeB64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// dryRunPod asks the API server to admit a pod (dry run: admission runs,
// webhooks included, nothing is stored) and returns its verdict.
func (k *cluster) dryRunPod(t *testing.T, ns string, annotations map[string]string, spec corev1.PodSpec) error {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "installtest-", Namespace: ns, Annotations: annotations},
		Spec:       spec,
	}
	return k.c.Create(ctx(t), pod, client.DryRunAll)
}

func (k *cluster) ensureNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := controllerutil.CreateOrUpdate(ctx(t), k.c, ns, func() error {
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		for key, v := range labels {
			ns.Labels[key] = v
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// appPod is a minimal pod that passes the restricted Pod Security Standard.
func appPod() corev1.PodSpec {
	no, yes := false, true
	return corev1.PodSpec{Containers: []corev1.Container{{
		Name: "app", Image: "registry.example/app:1",
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: &no, RunAsNonRoot: &yes,
			Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}}}
}

// checkAdmission: with the manager down (envtest runs no pods), the webhook
// configuration decides what happens to pods. Pods without the annotation are
// never sent to the webhook (matchConditions); annotated pods are refused
// under failurePolicy Fail and admitted under Ignore. The manager's own pod
// passes the restricted Pod Security Standard.
func (k *cluster) checkAdmission(t *testing.T, d *appsv1.Deployment, failurePolicy admissionv1.FailurePolicyType) {
	t.Helper()
	k.ensureNamespace(t, namespace, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
	bare := corev1.PodSpec{Containers: []corev1.Container{{Name: "bare", Image: "registry.example/bare:1"}}}
	if err := k.dryRunPod(t, namespace, nil, bare); err == nil || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) {
		t.Fatalf("PodSecurity admission does not enforce here (a bare pod got %v), so the next check would prove nothing", err)
	}
	if err := k.dryRunPod(t, namespace, d.Spec.Template.Annotations, d.Spec.Template.Spec); err != nil {
		t.Errorf("the manager's pod is not admitted in a namespace enforcing the restricted Pod Security Standard: %v", err)
	}
	k.ensureNamespace(t, "shop", nil)
	if err := k.dryRunPod(t, "shop", nil, appPod()); err != nil {
		t.Errorf("a pod that did not ask for falguard was refused while the manager is down: %v", err)
	}
	err := k.dryRunPod(t, "shop", map[string]string{"falguard.dev/inject": "realtime"}, appPod())
	switch failurePolicy {
	case admissionv1.Fail:
		if err == nil || !strings.Contains(err.Error(), `failed calling webhook "inject.falguard.dev"`) {
			t.Errorf("an annotated pod was admitted without the webhook under failurePolicy Fail (err %v)", err)
		}
	case admissionv1.Ignore:
		if err != nil {
			t.Errorf("an annotated pod was refused under failurePolicy Ignore: %v", err)
		}
	}
	if err := k.dryRunPod(t, "kube-system", map[string]string{"falguard.dev/inject": "realtime"}, appPod()); err != nil {
		t.Errorf("an annotated pod in kube-system reached the webhook: %v", err)
	}
}
