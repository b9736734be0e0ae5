package podwebhook

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/internal/inject"
)

func annotatedPod(ns, name, credential string, extra map[string]string) *corev1.Pod {
	ann := map[string]string{falguardv1alpha1.AnnotationInject: credential}
	for k, v := range extra {
		ann[k] = v
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []corev1.Container{{Name: "app", Image: "example.com/app:1"}},
		},
	}
}

// createAndRead creates the pod through the API and returns what was stored.
func createAndRead(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	got := &corev1.Pod{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(pod), got); err != nil {
		t.Fatal(err)
	}
	return got
}

// assertInjected checks what a user relies on in a stored pod.
func assertInjected(t *testing.T, p *corev1.Pod, credential string, native bool) {
	t.Helper()
	if p.Annotations[inject.AnnotationStatus] != inject.StatusInjected {
		t.Errorf("status annotation = %q, want injected", p.Annotations[inject.AnnotationStatus])
	}
	if p.Labels[falguardv1alpha1.LabelCredential] != credential {
		t.Errorf("credential label = %q, want %q", p.Labels[falguardv1alpha1.LabelCredential], credential)
	}
	var sidecar *corev1.Container
	if native {
		n := len(p.Spec.InitContainers)
		if n == 0 || p.Spec.InitContainers[n-1].Name != inject.SidecarName {
			t.Fatalf("want %s as the last init container, got %v", inject.SidecarName, names(p.Spec.InitContainers))
		}
		sidecar = &p.Spec.InitContainers[n-1]
		if ptr.Deref(sidecar.RestartPolicy, "") != corev1.ContainerRestartPolicyAlways {
			t.Errorf("sidecar restartPolicy = %v, want Always", sidecar.RestartPolicy)
		}
	} else {
		for i := range p.Spec.Containers {
			if p.Spec.Containers[i].Name == inject.SidecarName {
				sidecar = &p.Spec.Containers[i]
			}
		}
		if sidecar == nil {
			t.Fatalf("no %s container in %v", inject.SidecarName, names(p.Spec.Containers))
		}
	}
	if sidecar.StartupProbe == nil || sidecar.StartupProbe.HTTPGet.Path != "/startupz" {
		t.Errorf("sidecar startupProbe = %+v, want httpGet /startupz", sidecar.StartupProbe)
	}
	wantArgs := []string{"run", "--listen=127.0.0.1:4750", "--ops-listen=:4751", "--credentials-dir=" + inject.CredentialsDir}
	if !slices.Equal(sidecar.Args, wantArgs) {
		t.Errorf("sidecar args = %q, want %q", sidecar.Args, wantArgs)
	}
	if sc := sidecar.SecurityContext; sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) || ptr.Deref(sc.RunAsUser, 0) != 65532 {
		t.Errorf("sidecar securityContext not hardened: %+v", sc)
	}
	var vol *corev1.Volume
	for i := range p.Spec.Volumes {
		if p.Spec.Volumes[i].Name == inject.VolumeName {
			vol = &p.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Secret == nil || vol.Secret.SecretName != falguardv1alpha1.ManagedSecretName(credential) {
		t.Errorf("credentials volume = %+v, want Secret %s", vol, falguardv1alpha1.ManagedSecretName(credential))
	}
	for _, c := range append(slices.Clone(p.Spec.Containers), p.Spec.InitContainers...) {
		mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == inject.VolumeName })
		if mounted != (c.Name == inject.SidecarName) {
			t.Errorf("container %s: credentials mounted=%v; only the sidecar may mount them", c.Name, mounted)
		}
		if c.Name == inject.SidecarName {
			continue
		}
		isApp := slices.ContainsFunc(p.Spec.Containers, func(x corev1.Container) bool { return x.Name == c.Name })
		if got := envValue(c, inject.EnvProxyURL); isApp && got == "" {
			t.Errorf("app container %s has no %s", c.Name, inject.EnvProxyURL)
		} else if !isApp && got != "" {
			t.Errorf("init container %s got %s", c.Name, inject.EnvProxyURL)
		}
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func admissionsTotal() float64 {
	var sum float64
	for _, r := range []string{resultInjected, resultUnchanged, resultDenied, resultError} {
		sum += testutil.ToFloat64(admissions.WithLabelValues(r))
	}
	return sum
}

func TestBarePod(t *testing.T) {
	ns := newNamespace(t, "realtime")
	before := admissionsTotal()

	got := createAndRead(t, annotatedPod(ns, "web", "realtime", nil))
	assertInjected(t, got, "realtime", true)
	if v := envValue(got.Spec.Containers[0], inject.EnvRealtimeURL); v != "ws://127.0.0.1:4750/realtime" {
		t.Errorf("%s = %q", inject.EnvRealtimeURL, v)
	}

	// A pod that did not ask never reaches the webhook (matchConditions).
	plain := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "plain"},
		Spec:       corev1.PodSpec{AutomountServiceAccountToken: ptr.To(false), Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
	}
	gotPlain := createAndRead(t, plain)
	if len(gotPlain.Spec.InitContainers) != 0 || len(gotPlain.Spec.Containers[0].Env) != 0 || len(gotPlain.Labels) != 0 {
		t.Errorf("unannotated pod was changed: %+v", gotPlain.Spec)
	}
	if n := admissionsTotal() - before; n != 1 {
		t.Errorf("webhook saw %v admissions, want 1 (the unannotated pod must be filtered by matchConditions)", n)
	}

	// UPDATE never reaches the webhook: changing a label works and changes nothing else.
	got.Labels["tier"] = "frontend"
	if err := k8s.Update(context.Background(), got); err != nil {
		t.Fatalf("update injected pod: %v", err)
	}
	if n := admissionsTotal() - before; n != 1 {
		t.Errorf("webhook saw %v admissions after an UPDATE, want still 1", n)
	}
}

func TestDeploymentPods(t *testing.T) {
	ns := newNamespace(t, "realtime")
	ctx := context.Background()
	labels := map[string]string{"app": "shop"}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "shop"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{
					falguardv1alpha1.AnnotationInject: "realtime",
					inject.AnnotationMemoryLimit:      "96Mi",
				}},
				Spec: corev1.PodSpec{
					AutomountServiceAccountToken: ptr.To(false),
					// An Istio-injected template: istio-init must stay first.
					InitContainers: []corev1.Container{{Name: "istio-init", Image: "istio/proxyv2:1.24.0"}},
					Containers: []corev1.Container{
						{Name: "app", Image: "example.com/shop:1", Env: []corev1.EnvVar{{Name: inject.EnvProxyURL, Value: "http://mine/proxy"}}},
						{Name: "istio-proxy", Image: "istio/proxyv2:1.24.0"},
					},
				},
			},
		},
	}
	if err := k8s.Create(ctx, deploy); err != nil {
		t.Fatalf("create Deployment: %v", err)
	}
	// No controller-manager here: create the pods from the stored template
	// as the ReplicaSet controller would.
	stored := &appsv1.Deployment{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(deploy), stored); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < int(*stored.Spec.Replicas); i++ {
		tmpl := stored.Spec.Template.DeepCopy()
		pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
		pod.Namespace, pod.GenerateName = ns, "shop-7d9c8b-"
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "shop-7d9c8b", UID: "00000000-0000-0000-0000-000000000001", Controller: ptr.To(true)}}
		got := createAndRead(t, pod)
		assertInjected(t, got, "realtime", true)
		if n := names(got.Spec.InitContainers); !slices.Equal(n, []string{"istio-init", inject.SidecarName}) {
			t.Errorf("init containers = %v, want istio-init then the sidecar", n)
		}
		if v := envValue(got.Spec.Containers[0], inject.EnvProxyURL); v != "http://mine/proxy" {
			t.Errorf("the pod's own %s was overridden: %q", inject.EnvProxyURL, v)
		}
		if lim := got.Spec.InitContainers[1].Resources.Limits.Memory().String(); lim != "96Mi" {
			t.Errorf("sidecar memory limit = %s, want the annotation's 96Mi", lim)
		}
	}
}

func TestJobPods(t *testing.T) {
	ns := newNamespace(t, "batch")
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		native bool
	}{{"nightly", true}, {"legacy", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ann := map[string]string{falguardv1alpha1.AnnotationInject: "batch"}
			if !tc.native {
				ann[inject.AnnotationNativeSidecar] = "false"
			}
			job := &batchv1.Job{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: tc.name},
				Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Annotations: ann},
					Spec: corev1.PodSpec{
						AutomountServiceAccountToken: ptr.To(false),
						RestartPolicy:                corev1.RestartPolicyNever,
						Containers:                   []corev1.Container{{Name: "main", Image: "example.com/batch:1"}},
					},
				}},
			}
			if err := k8s.Create(ctx, job); err != nil {
				t.Fatalf("create Job: %v", err)
			}
			stored := &batchv1.Job{}
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(job), stored); err != nil {
				t.Fatal(err)
			}
			tmpl := stored.Spec.Template.DeepCopy()
			pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
			pod.Namespace, pod.GenerateName = ns, tc.name+"-"
			got := createAndRead(t, pod)
			assertInjected(t, got, "batch", tc.native)
			quit := envValue(got.Spec.Containers[0], inject.EnvQuitURL)
			if tc.native && quit != "" {
				t.Errorf("native sidecar needs no quit URL, got %s=%q", inject.EnvQuitURL, quit)
			}
			if !tc.native && quit != "http://127.0.0.1:4750/quitquitquit" {
				t.Errorf("legacy Job pod: %s = %q, want the sidecar's /quitquitquit", inject.EnvQuitURL, quit)
			}
		})
	}
}

func TestDenials(t *testing.T) {
	ns := newNamespace(t, "realtime")
	for _, tc := range []struct {
		name string
		mod  func(*corev1.Pod)
		want string
	}{
		{"unknown credential", func(p *corev1.Pod) { p.Annotations[falguardv1alpha1.AnnotationInject] = "nope" },
			`FalCredential "nope" not found in namespace "` + ns + `": create it first`},
		{"hostNetwork", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "pod uses hostNetwork"},
		{"shareProcessNamespace", func(p *corev1.Pod) { p.Spec.ShareProcessNamespace = ptr.To(true) }, "shareProcessNamespace: true"},
		{"port clash", func(p *corev1.Pod) { p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 4751}} },
			`container "app" uses port 4751, which the falguard sidecar's ops listener needs`},
		{"malformed memory", func(p *corev1.Pod) { p.Annotations[inject.AnnotationMemoryLimit] = "lots" },
			`annotation falguard.dev/sidecar-memory-limit="lots" is not a resource quantity`},
		{"malformed native-sidecar", func(p *corev1.Pod) { p.Annotations[inject.AnnotationNativeSidecar] = "off" },
			`annotation falguard.dev/native-sidecar="off" is not a boolean`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := annotatedPod(ns, "denied-"+strings.ReplaceAll(strings.ToLower(tc.name), " ", "-"), "realtime", nil)
			tc.mod(pod)
			err := k8s.Create(context.Background(), pod)
			if err == nil {
				t.Fatal("pod was admitted, want a denial")
			}
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v\nwant a Forbidden containing %q", err, tc.want)
			}
			t.Logf("user sees: %v", err)
		})
	}
}

// TestMissingSidecarReported: the operator's namespace is excluded from
// injection, so an annotated pod there is admitted without the sidecar, just
// as under failurePolicy Ignore.
func TestMissingSidecarReported(t *testing.T) {
	ctx := context.Background()
	pod := annotatedPod(operatorNS, "unprotected", "realtime", nil)
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	err := waitFor(15*time.Second, func() error {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace(operatorNS)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == pod.Name && e.Reason == ReasonSidecarMissing && e.Type == corev1.EventTypeWarning {
				return nil
			}
		}
		return fmt.Errorf("no %s event for pod %s among %d events", ReasonSidecarMissing, pod.Name, len(evs.Items))
	})
	if err != nil {
		t.Fatal(err)
	}
	if g := testutil.ToFloat64(podsMissingSidecar); g < 1 {
		t.Errorf("falguard_pods_missing_sidecar = %v, want >= 1", g)
	}
	before := testutil.ToFloat64(podsMissingSidecar)
	if err := k8s.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(15*time.Second, func() error {
		if g := testutil.ToFloat64(podsMissingSidecar); g != before-1 {
			return fmt.Errorf("gauge = %v after deleting the pod, want %v", g, before-1)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestAdmissionLatency measures pod creation through the real API server with
// and without the webhook in the path. It reports; it asserts nothing timed.
func TestAdmissionLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement only")
	}
	ns := newNamespace(t, "realtime")
	const n = 150
	round := 0
	measure := func(annotated bool) []time.Duration {
		round++
		var d []time.Duration
		for i := 0; i < n; i++ {
			pod := annotatedPod(ns, fmt.Sprintf("lat-%d-%d", round, i), "realtime", nil)
			if !annotated {
				pod.Annotations = nil
			}
			start := time.Now()
			if err := k8s.Create(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			d = append(d, time.Since(start))
		}
		return d
	}
	measure(true) // warm caches and connections
	with, without := measure(true), measure(false)
	t.Logf("pod CREATE latency against the real API server, %d pods each, 2 shared cores:", n)
	t.Logf("  with the webhook:    p50 %v  p99 %v", pct(with, 50), pct(with, 99))
	t.Logf("  without (filtered):  p50 %v  p99 %v", pct(without, 50), pct(without, 99))
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	idx := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, idx-1))].Round(10 * time.Microsecond)
}
