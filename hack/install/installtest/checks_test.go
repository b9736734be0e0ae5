//go:build installtest

package installtest

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/falguard/falguard/controllers/podwebhook"
	"github.com/falguard/falguard/internal/inject"
)

// deploymentWant is what an install must produce for the manager.
type deploymentWant struct {
	replicas           int32
	selfManagedCerts   bool
	webhookConfigName  string
	webhookServiceName string
	sidecarImage       string // prefix, e.g. "ghcr.io/falguard/falguard-sidecar:"
	// sidecarDefaults are the resource and port flags; nil means the
	// built-in defaults of internal/inject, which both paths ship.
	sidecarDefaults map[string]string
}

// builtInSidecarDefaults are the sidecar flags that change nothing: the
// manager's built-in defaults, as the chart's default values pass them.
var builtInSidecarDefaults = map[string]string{
	"--sidecar-cpu-request":    inject.DefaultCPURequest,
	"--sidecar-cpu-limit":      "0",
	"--sidecar-memory-request": inject.DefaultMemoryRequest,
	"--sidecar-memory-limit":   inject.DefaultMemoryLimit,
	"--sidecar-proxy-port":     fmt.Sprint(inject.DefaultProxyPort),
	"--sidecar-ops-port":       fmt.Sprint(inject.DefaultOpsPort),
}

// checkDeployment asserts the manager Deployment's security settings, flags,
// probes and resources: what a platform team reviews before accepting it.
func checkDeployment(t *testing.T, d *appsv1.Deployment, want deploymentWant) {
	t.Helper()
	if d.Spec.Replicas == nil || *d.Spec.Replicas != want.replicas {
		t.Errorf("replicas = %s, want %d", deref(d.Spec.Replicas), want.replicas)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update must keep every webhook replica serving (maxUnavailable 0), got %+v", d.Spec.Strategy)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the pod labels %v", d.Spec.Selector, d.Spec.Template.Labels)
	}
	pod := d.Spec.Template.Spec
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v: want runAsNonRoot, runAsUser 65532, seccomp RuntimeDefault", psc)
	}
	if pod.ServiceAccountName == "" || pod.ServiceAccountName == "default" {
		t.Errorf("serviceAccountName %q: want the manager's own ServiceAccount", pod.ServiceAccountName)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("container securityContext %+v: want read-only root fs, no privilege escalation, drop ALL, non-root", sc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}
	for _, p := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.LivenessProbe, "/healthz"}, {c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "health" {
			t.Errorf("probe for %s is %+v, want httpGet %s on the health port", p.path, p.probe, p.path)
		}
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["webhook-server"] != 9443 || ports["http-metrics"] != 8080 || ports["health"] != 8081 {
		t.Errorf("ports %v: want webhook-server 9443, http-metrics 8080, health 8081", ports)
	}
	args := argMap(c.Args)
	wantArgs := map[string]string{
		"--leader-elect":              "",
		"--namespace":                 "$(POD_NAMESPACE)",
		"--health-probe-bind-address": ":8081",
		"--metrics-bind-address":      ":8080",
		"--webhook-port":              "9443",
		"--webhook-config-name":       want.webhookConfigName,
		"--webhook-service-name":      want.webhookServiceName,
		"--self-managed-certs":        map[bool]string{true: "true", false: "false"}[want.selfManagedCerts],
	}
	sidecar := want.sidecarDefaults
	if sidecar == nil {
		sidecar = builtInSidecarDefaults
	}
	for k, v := range sidecar {
		wantArgs[k] = v
	}
	for k, v := range wantArgs {
		got, ok := args[k]
		if !ok || got != v {
			t.Errorf("flag %s=%q (set: %v), want %q; args %q", k, got, ok, v, c.Args)
		}
	}
	if !strings.HasPrefix(args["--sidecar-image"], want.sidecarImage) {
		t.Errorf("--sidecar-image=%q, want prefix %q", args["--sidecar-image"], want.sidecarImage)
	}
	var podNS bool
	for _, e := range c.Env {
		if e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace" {
			podNS = true
		}
	}
	if !podNS {
		t.Errorf("env %v: want POD_NAMESPACE from the downward API", c.Env)
	}
	// The read-only root needs a writable /tmp; cert-manager's Secret is
	// mounted where the manager reads its serving certificate.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	if _, ok := mounts["/tmp"]; !ok {
		t.Errorf("no writable /tmp mount: %v", c.VolumeMounts)
	}
	certMount, mounted := mounts[args["--webhook-cert-dir"]]
	if mounted == want.selfManagedCerts {
		t.Errorf("serving-cert mount at %s present=%v with self-managed certs=%v", args["--webhook-cert-dir"], mounted, want.selfManagedCerts)
	}
	if mounted && !certMount.ReadOnly {
		t.Errorf("the serving-cert Secret must be mounted read-only")
	}
}

// argMap maps "--flag=value" (or "--flag") to value, failing on repeats of
// single-valued flags by keeping the last, as Go's flag package does.
func argMap(args []string) map[string]string {
	out := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		out[k] = v
	}
	return out
}

// checkWebhook asserts the webhook configuration: only annotated pods on
// CREATE, the requested failurePolicy, never kube-system or the operator's
// namespace, and the right Service.
func checkWebhook(t *testing.T, w *admissionv1.MutatingWebhookConfiguration, failurePolicy admissionv1.FailurePolicyType, ns, service string) {
	t.Helper()
	if len(w.Webhooks) != 1 {
		t.Fatalf("want one webhook, got %d", len(w.Webhooks))
	}
	h := w.Webhooks[0]
	if h.FailurePolicy == nil || *h.FailurePolicy != failurePolicy {
		t.Errorf("failurePolicy %s, want %s", deref(h.FailurePolicy), failurePolicy)
	}
	if len(h.MatchConditions) != 1 || !strings.Contains(h.MatchConditions[0].Expression, "'falguard.dev/inject' in object.metadata.annotations") ||
		!strings.Contains(h.MatchConditions[0].Expression, "has(object.metadata.annotations)") {
		t.Errorf("matchConditions %+v: want one on the falguard.dev/inject annotation, safe for pods without annotations", h.MatchConditions)
	}
	if len(h.Rules) != 1 || !slices.Equal(h.Rules[0].Operations, []admissionv1.OperationType{admissionv1.Create}) ||
		!slices.Equal(h.Rules[0].Resources, []string{"pods"}) || !slices.Equal(h.Rules[0].APIGroups, []string{""}) {
		t.Errorf("rules %+v: want pods, CREATE only", h.Rules)
	}
	if h.SideEffects == nil || *h.SideEffects != admissionv1.SideEffectClassNone {
		t.Errorf("sideEffects %s, want None", deref(h.SideEffects))
	}
	if h.ReinvocationPolicy == nil || *h.ReinvocationPolicy != admissionv1.IfNeededReinvocationPolicy {
		t.Errorf("reinvocationPolicy %s, want IfNeeded", deref(h.ReinvocationPolicy))
	}
	sel, err := metav1.LabelSelectorAsSelector(h.NamespaceSelector)
	if err != nil {
		t.Fatalf("namespaceSelector: %v", err)
	}
	for _, excluded := range []string{"kube-system", ns} {
		if sel.Matches(labels.Set{"kubernetes.io/metadata.name": excluded}) {
			t.Errorf("namespaceSelector %v lets the webhook see namespace %s", h.NamespaceSelector, excluded)
		}
	}
	if h.ClientConfig.Service == nil || h.ClientConfig.Service.Name != service || h.ClientConfig.Service.Namespace != ns ||
		h.ClientConfig.Service.Path == nil || *h.ClientConfig.Service.Path != podwebhook.Path {
		t.Errorf("clientConfig %+v: want Service %s/%s path %s (where the manager serves the webhook)", h.ClientConfig, ns, service, podwebhook.Path)
	}
}

// deref shows a pointer's value, or "<unset>".
func deref[T any](p *T) string {
	if p == nil {
		return "<unset>"
	}
	return fmt.Sprint(*p)
}
