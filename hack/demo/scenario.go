package demo

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/hack/fakefal"
)

// The demo's namespace and objects.
const (
	DemoNamespace  = "demo-shop"
	DemoCredential = "realtime"
	DemoApp        = "storefront"
	DemoAdminRef   = "fal-admin-key"
	// RealtimeApp is the realtime model the demo talks to; ModelApp the
	// model it calls through the proxy.
	RealtimeApp = "fal-ai/fast-lcm-diffusion"
	ModelApp    = "fal-ai/flux/dev"
)

// DemoResult is what the demo measured, for its summary.
type DemoResult struct {
	Pod         *AppPod
	StartedIn   time.Duration
	OldKeyID    string
	NewKeyID    string
	Traffic     TrafficStats
	RevokedCode int
}

// NewDemoCredential is the demo's FalCredential: the operator creates the
// first key with the ADMIN key, rotates every `every` and keeps the previous
// key alive for grace.
func NewDemoCredential(ns, name string, every, grace time.Duration) *falguardv1alpha1.FalCredential {
	return &falguardv1alpha1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: falguardv1alpha1.FalCredentialSpec{
			AllowedApps: []string{RealtimeApp, "fal-ai/flux/*"},
			Rotation: &falguardv1alpha1.RotationSpec{
				AdminSecretRef: falguardv1alpha1.SecretKeySelector{Name: DemoAdminRef, Key: "FAL_ADMIN_KEY"},
				Every:          metav1.Duration{Duration: every},
				GracePeriod:    metav1.Duration{Duration: grace},
			},
		},
	}
}

// RunDemo runs the demo's story on a started Env: a FalCredential with
// rotation, an injected app pod, a realtime session with the official client,
// a forced rotation that the open session survives, and the old key refused.
func RunDemo(ctx context.Context, e *Env, grace time.Duration) (*DemoResult, error) {
	res := &DemoResult{}
	s := e.Steps

	s.Begin("Creating namespace %s: Secret %s (fal ADMIN key) and FalCredential %s with rotation (grace period %s)", DemoNamespace, DemoAdminRef, DemoCredential, grace)
	if err := e.CreateNamespace(ctx, DemoNamespace); err != nil {
		return res, err
	}
	if err := e.CreateSecret(ctx, DemoNamespace, DemoAdminRef, map[string]string{"FAL_ADMIN_KEY": e.AdminKey}); err != nil {
		return res, err
	}
	if err := e.Client.Create(ctx, NewDemoCredential(DemoNamespace, DemoCredential, 720*time.Hour, grace)); err != nil {
		return res, fmt.Errorf("creating FalCredential %s/%s: %w", DemoNamespace, DemoCredential, err)
	}
	fc, err := e.WaitCredential(ctx, DemoNamespace, DemoCredential, 60*time.Second, "Ready", CredentialReady)
	if err != nil {
		return res, err
	}
	s.Detail("the operator created key %s at fal with the ADMIN key and published it in Secret %s", fc.Status.KeyID, fc.Status.SecretName)
	s.End("Ready, key %s", fc.Status.KeyID)

	s.Begin("Deploying %s (annotated falguard.dev/inject: %s) and playing kubelet for its pod", DemoApp, DemoCredential)
	pod, err := e.DeployApp(ctx, AppSpec{Namespace: DemoNamespace, Name: DemoApp, Credential: DemoCredential,
		Stored: func(p *corev1.Pod) { describeInjection(s, p) }})
	res.Pod = pod
	if err != nil {
		return res, err
	}
	s.End("pod %s running: sidecar on 127.0.0.1:%d (ops :%d), app started after the sidecar's startupProbe", pod.Created.Name, pod.ProxyPort, pod.OpsPort)

	app := pod.App
	s.Begin("Calling fal through the sidecar with the official @fal-ai/client (no key in the app)")
	var run RunReply
	if err := app.Call(ctx, "run", map[string]any{"app": ModelApp, "input": map[string]any{"prompt": "a lighthouse at dusk"}}, &run); err != nil {
		return res, fmt.Errorf("fal.run through the sidecar's proxy: %w", err)
	}
	s.Detail("fal.run(%q) via FAL_PROXY_URL: answered, request id %s", ModelApp, run.RequestID)
	var tok TokenReply
	if err := app.Call(ctx, "token", map[string]any{"app": RealtimeApp}, &tok); err != nil {
		return res, fmt.Errorf("GET FAL_TOKEN_URL: %w", err)
	}
	s.Detail("GET FAL_TOKEN_URL?app=%s: a short-lived JWT (expires %v), minted by the sidecar with the key it holds", RealtimeApp, tok.ExpiresAt)
	if err := app.Call(ctx, "rt-open", map[string]any{"conn": "hello", "app": RealtimeApp}, nil); err != nil {
		return res, err
	}
	// One frame first: while its socket opens the client keeps only the
	// latest message, so the next frames go once the session is up.
	for i := 1; i <= 3; i++ {
		if err := app.Call(ctx, "rt-send", map[string]any{"conn": "hello", "input": map[string]any{"prompt": fmt.Sprintf("frame %d", i), "seq": i}}, nil); err != nil {
			return res, err
		}
		var rt RTStats
		if err := app.Call(ctx, "rt-wait", map[string]any{"conn": "hello", "results": i, "timeoutMs": 15000}, &rt); err != nil {
			return res, err
		}
		if rt.Results < i || rt.ErrorCount > 0 {
			return res, fmt.Errorf("realtime session through the relay: %d of %d results, errors %+v", rt.Results, i, rt.Errors)
		}
	}
	_ = app.Call(ctx, "rt-close", map[string]any{"conn": "hello"}, nil)
	s.Detail("fal.realtime.connect(%q): 3 frames sent, 3 results back through the sidecar's relay (ws -> wss://fal.run)", RealtimeApp)
	s.End("proxy, token and realtime all work without a key in the app")

	s.Begin("Forcing a key rotation while a realtime session stays open and requests keep flowing")
	res.OldKeyID = fc.Status.KeyID
	if err := app.Call(ctx, "traffic-start", map[string]any{"app": ModelApp, "rtApp": RealtimeApp, "everyMs": 200}, nil); err != nil {
		return res, err
	}
	time.Sleep(time.Second) // let the session open and settle on the old key
	// Held in memory only, to show fal's answer to it later; never printed.
	oldKey, err := pod.VolumeKey()
	if err != nil {
		return res, err
	}
	rotateAt := time.Now()
	if _, err := e.ForceRotation(ctx, DemoNamespace, DemoCredential); err != nil {
		return res, err
	}
	s.Detail("kubectl annotate falcredential %s %s=<new value>", DemoCredential, falguardv1alpha1.AnnotationRotateNow)
	fc, err = e.WaitCredential(ctx, DemoNamespace, DemoCredential, 60*time.Second, "a new key after the forced rotation", func(fc *falguardv1alpha1.FalCredential) bool {
		return fc.Status.KeyID != "" && fc.Status.KeyID != res.OldKeyID
	})
	if err != nil {
		return res, err
	}
	res.NewKeyID = fc.Status.KeyID
	s.Detail("operator: new key %s published; previous key %s stays valid until %s", res.NewKeyID, orDash(fc.Status.PreviousKeyID), revokeAt(fc))
	if err := e.waitSidecarUses(ctx, pod, rotateAt, res.NewKeyID); err != nil {
		return res, err
	}
	s.Detail("sidecar: reloaded from the rewritten volume; its calls to fal now carry key %s", res.NewKeyID)
	if code, err := e.FalStatusForKey(ctx, oldKey); err == nil {
		s.Detail("fakefal: the old key still answers HTTP %d during the grace period", code)
	}
	st, err := trafficStats(ctx, app)
	if err != nil {
		return res, err
	}
	s.End("the open session never noticed: %s", st.Summary())

	s.Begin("Waiting out the grace period: the operator revokes the old key at fal")
	oldKeyAlive := func() bool { return e.FalKeyLive(res.OldKeyID) }
	wctx, cancel := context.WithTimeout(ctx, grace+45*time.Second)
	defer cancel()
	if err := waitUntil(wctx, "revocation of the old key", 250*time.Millisecond, func(context.Context) error {
		if oldKeyAlive() {
			return errNotReady
		}
		return nil
	}, e.Manager()); err != nil {
		return res, err
	}
	revokedSeen, err := e.FalStatusForKey(ctx, oldKey)
	if err != nil {
		return res, err
	}
	res.RevokedCode = revokedSeen
	s.Detail("fakefal: key %s deleted through DELETE /v1/keys/%s", res.OldKeyID, res.OldKeyID)
	if st, err = trafficStats(ctx, app); err != nil {
		return res, err
	}
	final := st
	if err := app.Call(ctx, "traffic-stop", map[string]any{"settleMs": 5000}, &final); err != nil {
		return res, err
	}
	res.Traffic = final
	s.Detail("the same WebSocket, opened before the rotation, carried the session throughout: %s", final.Summary())
	s.End("old key %s refused by fal from now on (HTTP %d for anyone still holding it)", res.OldKeyID, revokedSeen)
	return res, nil
}

// waitSidecarUses waits until the sidecar's calls to fal made after t carry keyID.
func (e *Env) waitSidecarUses(ctx context.Context, pod *AppPod, t time.Time, keyID string) error {
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return waitUntil(wctx, "the sidecar to use key "+keyID, 100*time.Millisecond, func(context.Context) error {
		calls := e.FalCallsSince(t, fakefal.HostRun, "/")
		for i := len(calls) - 1; i >= 0; i-- {
			if calls[i].KeyID == keyID {
				return nil
			}
		}
		return errNotReady
	}, pod.Running.Container(SidecarContainer).Proc())
}

func trafficStats(ctx context.Context, app *App) (TrafficStats, error) {
	var st TrafficStats
	err := app.Call(ctx, "traffic-stats", nil, &st)
	return st, err
}

// Summary says in one line what the traffic saw.
func (t TrafficStats) Summary() string {
	return fmt.Sprintf("%d proxied requests (%d failed); realtime: %d frames sent, %d results, %d errors, %d reconnects, %d closes",
		t.ProxyOK+t.ProxyFailed, t.ProxyFailed, t.Realtime.Sent, t.Realtime.Results, t.Realtime.ErrorCount, t.SocketsDuring.Opened, t.SocketsDuring.Closed)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func revokeAt(fc *falguardv1alpha1.FalCredential) string {
	if fc.Status.PreviousKeyRevokeAt == nil {
		return "(not set)"
	}
	return fc.Status.PreviousKeyRevokeAt.Format(time.TimeOnly)
}

// describeInjection prints what the webhook did to the pod, as stored.
func describeInjection(s *Steps, pod *corev1.Pod) {
	for _, c := range pod.Spec.InitContainers {
		if c.Name != SidecarContainer {
			continue
		}
		policy := "regular init container"
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			policy = "native sidecar (restartPolicy: Always)"
		}
		s.Detail("webhook: added init container %s, %s, image %s, args %s", c.Name, policy, c.Image, strings.Join(c.Args, " "))
		for _, m := range c.VolumeMounts {
			s.Detail("webhook: mounted %s read-only=%v at %s (sidecar only)", m.Name, m.ReadOnly, m.MountPath)
		}
	}
	for _, c := range pod.Spec.Containers {
		var names []string
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "FAL_") {
				names = append(names, e.Name+"="+e.Value)
			}
		}
		sort.Strings(names)
		if len(names) > 0 {
			s.Detail("webhook: app container %s gets %s", c.Name, strings.Join(names, " "))
		}
	}
}
