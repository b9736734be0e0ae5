package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/sidecar/policy"
)

// CreateSecret creates (or replaces the data of) an Opaque Secret.
func (e *Env) CreateSecret(ctx context.Context, ns, name string, data map[string]string) error {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Type: corev1.SecretTypeOpaque, StringData: data}
	if _, err := e.Kube.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating Secret %s/%s: %w", ns, name, err)
	}
	return nil
}

// UpdateSecretKey sets one key of a Secret, as a person or External Secrets would.
func (e *Env) UpdateSecretKey(ctx context.Context, ns, name, key, value string) error {
	patch, _ := json.Marshal(map[string]any{"stringData": map[string]string{key: value}})
	if _, err := e.Kube.CoreV1().Secrets(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("updating Secret %s/%s: %w", ns, name, err)
	}
	return nil
}

// CreateNamespace creates ns.
func (e *Env) CreateNamespace(ctx context.Context, ns string) error {
	return e.ensureNamespace(ctx, ns)
}

// GetCredential reads a FalCredential.
func (e *Env) GetCredential(ctx context.Context, ns, name string) (*falguardv1alpha1.FalCredential, error) {
	fc := &falguardv1alpha1.FalCredential{}
	if err := e.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, fc); err != nil {
		return nil, fmt.Errorf("reading FalCredential %s/%s: %w", ns, name, err)
	}
	return fc, nil
}

// WaitCredential polls the FalCredential until cond accepts it; on timeout
// the error shows its last status.
func (e *Env) WaitCredential(ctx context.Context, ns, name string, timeout time.Duration, what string, cond func(*falguardv1alpha1.FalCredential) bool) (*falguardv1alpha1.FalCredential, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last *falguardv1alpha1.FalCredential
	err := waitUntil(wctx, fmt.Sprintf("FalCredential %s/%s: %s", ns, name, what), 200*time.Millisecond, func(ctx context.Context) error {
		fc, err := e.GetCredential(ctx, ns, name)
		if err != nil {
			return err
		}
		last = fc
		if !cond(fc) {
			return errNotReady
		}
		return nil
	}, e.Manager())
	if err != nil && last != nil {
		st, _ := json.MarshalIndent(last.Status, "    ", "  ")
		return last, fmt.Errorf("%w; its status:\n    %s", err, st)
	}
	return last, err
}

// CredentialReady is true once Ready=True for the current generation.
func CredentialReady(fc *falguardv1alpha1.FalCredential) bool {
	c := apimeta.FindStatusCondition(fc.Status.Conditions, falguardv1alpha1.ConditionReady)
	return c != nil && c.Status == metav1.ConditionTrue && fc.Status.ObservedGeneration == fc.Generation && fc.Status.KeyID != ""
}

// ForceRotation sets falguard.dev/rotate-now to a new value.
func (e *Env) ForceRotation(ctx context.Context, ns, name string) (string, error) {
	v := strconv.FormatInt(time.Now().UnixNano(), 10)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{falguardv1alpha1.AnnotationRotateNow: v}}})
	fc := &falguardv1alpha1.FalCredential{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := e.Client.Patch(ctx, fc, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return "", fmt.Errorf("annotating FalCredential %s/%s with %s: %w", ns, name, falguardv1alpha1.AnnotationRotateNow, err)
	}
	return v, nil
}

// ManagedSecret reads the Secret the controller writes for a credential and
// returns the key id and the policy in it (never the key itself).
func (e *Env) ManagedSecret(ctx context.Context, ns, credential string) (*corev1.Secret, *policy.Policy, error) {
	s, err := e.Kube.CoreV1().Secrets(ns).Get(ctx, falguardv1alpha1.ManagedSecretName(credential), metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("reading the managed Secret of %s/%s: %w", ns, credential, err)
	}
	p, err := policy.Parse(s.Data[policy.PolicyFile])
	if err != nil {
		return s, nil, fmt.Errorf("managed Secret %s/%s: %w", ns, s.Name, err)
	}
	return s, p, nil
}

// AppSpec describes a demo Deployment.
type AppSpec struct {
	Namespace, Name, Credential string
	// Annotations are added to the pod template (besides the inject one).
	Annotations map[string]string
	// Mutate may change the pod template before the Deployment is created.
	Mutate func(*corev1.PodTemplateSpec)
	// Stored, if set, sees the pod as the API server stored it, before it runs.
	Stored func(*corev1.Pod)
}

// AppPod is a demo Deployment's pod, run by the emulated kubelet.
type AppPod struct {
	Deployment *appsv1.Deployment
	ReplicaSet *appsv1.ReplicaSet
	// Created is the pod as the API server stored it, after admission.
	Created *corev1.Pod
	Running *RunningPod
	App     *App
	// ProxyPort and OpsPort are the sidecar's ports (from the annotations).
	ProxyPort, OpsPort int
}

// SidecarURL is the sidecar's app API base URL.
func (p *AppPod) SidecarURL() string { return fmt.Sprintf("http://127.0.0.1:%d", p.ProxyPort) }

// OpsURL is the sidecar's probes and metrics base URL.
func (p *AppPod) OpsURL() string { return fmt.Sprintf("http://127.0.0.1:%d", p.OpsPort) }

// SidecarMetrics fetches the sidecar's /metrics.
func (p *AppPod) SidecarMetrics(ctx context.Context) (string, error) {
	return getText(ctx, p.OpsURL()+"/metrics")
}

// ContainerEnv is the environment the emulated kubelet started the named
// container with: its env from the pod as the API server stored it (after
// admission), resolved and rewritten for this machine the way the kubelet
// emulator rewrites argv (mount paths, listen addresses), plus PATH and HOME.
// With names, only those variables are returned, in that order; a name the
// container lacks is an error, so a caller cannot run with a partial env.
func (p *AppPod) ContainerEnv(container string, names ...string) ([]string, error) {
	if p.Running == nil {
		return nil, fmt.Errorf("pod %s is not running", p.Created.Name)
	}
	ct := p.Running.Container(container)
	if ct == nil {
		return nil, fmt.Errorf("pod %s has no running container %s", p.Running.Pod.Name, container)
	}
	if len(names) == 0 {
		return append([]string(nil), ct.Env...), nil
	}
	vals := map[string]string{}
	for _, kv := range ct.Env {
		k, v, _ := strings.Cut(kv, "=")
		vals[k] = v
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		v, ok := vals[n]
		if !ok {
			return nil, fmt.Errorf("container %s of pod %s was started without %s in its env", container, p.Running.Pod.Name, n)
		}
		out = append(out, n+"="+v)
	}
	return out, nil
}

// CredentialsDir is where the emulated kubelet projects the managed Secret.
func (p *AppPod) CredentialsDir() string { return p.Running.VolumeDirs["falguard-credentials"] }

// NewAppTemplate is the demo app's pod template: one container running fal's
// official client, annotated to get the falguard sidecar on free ports.
func NewAppTemplate(spec AppSpec, proxyPort, opsPort int) corev1.PodTemplateSpec {
	ann := map[string]string{
		falguardv1alpha1.AnnotationInject: spec.Credential,
		annotationProxyPort:               strconv.Itoa(proxyPort),
		annotationOpsPort:                 strconv.Itoa(opsPort),
		annotationLogLevel:                "debug",
	}
	for k, v := range spec.Annotations {
		ann[k] = v
	}
	t := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": spec.Name}, Annotations: ann},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](10),
			Containers: []corev1.Container{{
				Name:  AppContainer,
				Image: AppImage,
				Env:   []corev1.EnvVar{{Name: "NODE_ENV", Value: "production"}},
			}},
		},
	}
	if spec.Mutate != nil {
		spec.Mutate(&t)
	}
	return t
}

// CreatePodLikeReplicaSet creates the Deployment, then its ReplicaSet and pod
// the way the deployment and replicaset controllers would (no
// controller-manager runs here): same template, pod-template-hash label,
// owner references, generated name. It returns the pod as stored.
func (e *Env) CreatePodLikeReplicaSet(ctx context.Context, spec AppSpec, tmpl corev1.PodTemplateSpec) (*appsv1.Deployment, *appsv1.ReplicaSet, *corev1.Pod, error) {
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Namespace: spec.Namespace, Labels: map[string]string{"app": spec.Name}},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": spec.Name}},
			Template: tmpl,
		},
	}
	dep, err := e.Kube.AppsV1().Deployments(spec.Namespace).Create(ctx, dep, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("creating Deployment %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	hash := podTemplateHash(&dep.Spec.Template)
	rsTmpl := *dep.Spec.Template.DeepCopy()
	rsTmpl.Labels = copyMap(rsTmpl.Labels)
	rsTmpl.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Name: dep.Name + "-" + hash, Namespace: dep.Namespace, Labels: rsTmpl.Labels,
			Annotations:     map[string]string{"deployment.kubernetes.io/revision": "1", "deployment.kubernetes.io/desired-replicas": "1", "deployment.kubernetes.io/max-replicas": "2"},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(dep, appsv1.SchemeGroupVersion.WithKind("Deployment"))},
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: rsTmpl.Labels},
			Template: rsTmpl,
		},
	}
	if rs, err = e.Kube.AppsV1().ReplicaSets(dep.Namespace).Create(ctx, rs, metav1.CreateOptions{}); err != nil {
		return dep, nil, nil, fmt.Errorf("creating ReplicaSet for %s/%s: %w", dep.Namespace, dep.Name, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    rs.Name + "-",
			Namespace:       rs.Namespace,
			Labels:          copyMap(rs.Spec.Template.Labels),
			Annotations:     copyMap(rs.Spec.Template.Annotations),
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))},
		},
		Spec: *rs.Spec.Template.Spec.DeepCopy(),
	}
	created, err := e.Kube.CoreV1().Pods(rs.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return dep, rs, nil, fmt.Errorf("creating the pod of ReplicaSet %s/%s (through admission): %w", rs.Namespace, rs.Name, err)
	}
	// Read it back: what the kubelet runs is what the API server stored.
	stored, err := e.Kube.CoreV1().Pods(rs.Namespace).Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil {
		return dep, rs, nil, fmt.Errorf("reading pod %s/%s back: %w", rs.Namespace, created.Name, err)
	}
	return dep, rs, stored, nil
}

// podTemplateHash mimics the deployment controller's label value (FNV-32a of
// the template, safe-encoded).
func podTemplateHash(t *corev1.PodTemplateSpec) string {
	h := fnv.New32a()
	b, _ := json.Marshal(t)
	h.Write(b)
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32()))
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// DeployApp creates the annotated Deployment and its pod, then plays kubelet
// for the pod: projects the managed Secret, starts the injected sidecar from
// its stored spec, waits for its startupProbe, starts the app.
func (e *Env) DeployApp(ctx context.Context, spec AppSpec) (*AppPod, error) {
	proxyPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	opsPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	tmpl := NewAppTemplate(spec, proxyPort, opsPort)
	dep, rs, pod, err := e.CreatePodLikeReplicaSet(ctx, spec, tmpl)
	if err != nil {
		return nil, err
	}
	ap := &AppPod{Deployment: dep, ReplicaSet: rs, Created: pod, ProxyPort: proxyPort, OpsPort: opsPort}
	if spec.Stored != nil {
		spec.Stored(pod)
	}
	if err := e.RunAppPod(ctx, ap); err != nil {
		return ap, err
	}
	return ap, nil
}

// RunAppPod plays kubelet for a stored demo pod and connects to its app.
func (e *Env) RunAppPod(ctx context.Context, ap *AppPod) error {
	rp, err := e.Kubelet.RunPod(ctx, ap.Created.Namespace, ap.Created.Name)
	if err != nil {
		return err
	}
	e.podsMu.Lock()
	e.pods = append(e.pods, rp)
	e.podsMu.Unlock()
	ap.Running = rp
	app := rp.Container(AppContainer)
	if app == nil {
		return fmt.Errorf("pod %s has no %s container", ap.Created.Name, AppContainer)
	}
	ap.App = NewApp(app.Stdin, app.Stdout)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := ap.App.WaitReady(wctx); err != nil {
		return err
	}
	e.markAvailable(ctx, ap)
	return nil
}

// markAvailable reports the ReplicaSet and Deployment as available, as their
// controllers would once the pod is ready, so kubectl shows 1/1.
func (e *Env) markAvailable(ctx context.Context, ap *AppPod) {
	if ap.ReplicaSet == nil || ap.Deployment == nil {
		return
	}
	if rs, err := e.Kube.AppsV1().ReplicaSets(ap.ReplicaSet.Namespace).Get(ctx, ap.ReplicaSet.Name, metav1.GetOptions{}); err == nil {
		rs.Status = appsv1.ReplicaSetStatus{Replicas: 1, FullyLabeledReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, ObservedGeneration: rs.Generation}
		_, _ = e.Kube.AppsV1().ReplicaSets(rs.Namespace).UpdateStatus(ctx, rs, metav1.UpdateOptions{})
	}
	if d, err := e.Kube.AppsV1().Deployments(ap.Deployment.Namespace).Get(ctx, ap.Deployment.Name, metav1.GetOptions{}); err == nil {
		now := metav1.Now()
		d.Status = appsv1.DeploymentStatus{
			Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, ObservedGeneration: d.Generation,
			Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", LastUpdateTime: now, LastTransitionTime: now}},
		}
		_, _ = e.Kube.AppsV1().Deployments(d.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
	}
}

// VolumeKeyID is the public half of the key the sidecar's credentials
// volume holds now (the secret half is never shown).
func (p *AppPod) VolumeKeyID() (string, error) {
	key, err := p.VolumeKey()
	if err != nil {
		return "", err
	}
	return KeyID(key), nil
}

// VolumeKey reads the key the sidecar's volume holds now: only to prove, at
// fakefal, that an old key is refused. Never print it.
func (p *AppPod) VolumeKey() (string, error) {
	b, err := os.ReadFile(filepath.Join(p.CredentialsDir(), policy.KeyFile))
	if err != nil {
		return "", fmt.Errorf("reading the key from the credentials volume: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
