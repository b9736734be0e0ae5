//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/hack/demo"
	"github.com/falguard/falguard/hack/fakefal"
)

const (
	ns         = "e2e"
	credName   = "rt"
	userSecret = "fal-user-key"
	adminRef   = "fal-admin-key"
	every      = time.Minute // the API's minimum: the suite waits for one scheduled rotation
	grace      = 20 * time.Second
	rtApp      = demo.RealtimeApp
	modelApp   = demo.ModelApp
)

// suite is the state the ordered steps share.
type suite struct {
	t   *testing.T
	ctx context.Context
	env *demo.Env
	pod *demo.AppPod

	userKey0, userKey1 string // keys the user puts in the source Secret
	keyA, keyB         string // operator-created keys (forced, then scheduled rotation)
	eventsText         string // the FalCredential's events, scanned for secrets at the end
}

func TestEndToEnd(t *testing.T) {
	// Finish (and clean up) well before `go test -timeout` would kill the
	// binary without running any cleanup.
	ctx := context.Background()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-45*time.Second))
		defer cancel()
	}
	keep := os.Getenv("E2E_KEEP") != ""
	env, err := demo.Start(ctx, demo.Options{Out: os.Stdout, KeepRunDir: keep})
	if err != nil {
		t.Fatalf("bringing the system up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			fmt.Fprintln(os.Stderr, "\n########## e2e failed: the last output of every process ##########")
			env.DumpLogs(os.Stderr)
		}
		env.Close()
		// Cleaning up is part of the contract, failed run or not.
		for _, l := range env.Leftovers() {
			t.Errorf("after cleanup: %s", l)
		}
	})
	s := &suite{t: t, ctx: ctx, env: env, userKey0: demo.NewKey("user0"), userKey1: demo.NewKey("user1")}
	env.Fal.AddKey(s.userKey0)
	env.Fal.AddKey(s.userKey1)

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"credential becomes Ready with the user's key", s.credentialReady},
		{"webhook refuses pods it must not inject", s.webhookDenials},
		{"injection as stored by the API server, sidecar ready", s.injection},
		{"examples/ run with the app container's env against its sidecar", s.examples},
		{"proxy, queue, stream, token and relay through the official client", s.clientFlows},
		{"source Secret change reaches the running sidecar", s.sourceSecretChange},
		{"a crashed sidecar is restarted and serves the current key", s.sidecarRestart},
		{"forced and scheduled rotation under traffic, manager restarted twice", s.rotations},
		{"a pod created after the restarts is injected", s.injectAfterRestart},
		{"deleting the FalCredential revokes its keys", s.deleteRevokes},
		{"no key or token in any log or metric", s.noSecretsLeaked},
	}
	for _, st := range steps {
		env.Steps.Say("\n=== %s", st.name)
		if !t.Run(st.name, st.run) {
			t.Fatalf("step %q failed; later steps depend on it", st.name)
		}
	}
}

func (s *suite) credentialReady(t *testing.T) {
	e := s.env
	must(t, e.CreateNamespace(s.ctx, ns))
	must(t, e.CreateSecret(s.ctx, ns, userSecret, map[string]string{"FAL_KEY": s.userKey0}))
	must(t, e.CreateSecret(s.ctx, ns, adminRef, map[string]string{"FAL_ADMIN_KEY": e.AdminKey}))
	fc := demo.NewDemoCredential(ns, credName, every, grace)
	fc.Spec.SecretRef = &falguardv1alpha1.SecretKeySelector{Name: userSecret, Key: "FAL_KEY"}
	must(t, e.Client.Create(s.ctx, fc))

	fc, err := e.WaitCredential(s.ctx, ns, credName, time.Minute, "Ready", demo.CredentialReady)
	must(t, err)
	if fc.Status.KeyID != demo.KeyID(s.userKey0) {
		t.Errorf("status.keyID = %q, want the user's key id %q", fc.Status.KeyID, demo.KeyID(s.userKey0))
	}
	if fc.Status.KeySource != falguardv1alpha1.KeySourceUser {
		t.Errorf("status.keySource = %q, want User", fc.Status.KeySource)
	}
	if c := apimeta.FindStatusCondition(fc.Status.Conditions, falguardv1alpha1.ConditionKeyVerified); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("KeyVerified = %+v, want True (fakefal accepts the key)", c)
	}
	sec, pol, err := e.ManagedSecret(s.ctx, ns, credName)
	must(t, err)
	if got := string(sec.Data["key"]); got != s.userKey0 {
		t.Errorf("managed Secret %s holds a key other than the source Secret's", sec.Name)
	}
	if !slices.Equal(pol.AllowedApps, fc.Spec.AllowedApps) {
		t.Errorf("policy.json allowedApps = %v, want %v", pol.AllowedApps, fc.Spec.AllowedApps)
	}
	if len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].UID != fc.UID {
		t.Errorf("managed Secret owner references = %+v, want the FalCredential", sec.OwnerReferences)
	}
	for _, v := range []string{fc.Status.KeyID, fc.Status.SecretName} {
		if strings.Contains(v, ":") {
			t.Errorf("status field %q looks like it holds a secret half", v)
		}
	}
}

func (s *suite) webhookDenials(t *testing.T) {
	base := func(name, cred string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{falguardv1alpha1.AnnotationInject: cred}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: demo.AppImage}}},
		}
	}
	hostNet := base("hostnet", credName)
	hostNet.Spec.HostNetwork = true
	shared := base("sharepid", credName)
	shared.Spec.ShareProcessNamespace = ptr.To(true)
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"unknown FalCredential", base("unknown", "no-such-credential"), "no-such-credential"},
		{"hostNetwork", hostNet, "hostNetwork"},
		{"shareProcessNamespace", shared, "shareProcessNamespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.env.Kube.CoreV1().Pods(ns).Create(s.ctx, tt.pod, metav1.CreateOptions{})
			if err == nil {
				t.Fatalf("pod %s was admitted; the webhook must deny it", tt.pod.Name)
			}
			if !apierrors.IsForbidden(err) && !apierrors.IsBadRequest(err) && !apierrors.IsInvalid(err) {
				t.Errorf("denial is %v, want an admission denial", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("denial %q does not mention %q", err, tt.want)
			}
		})
	}
	t.Run("pods without the annotation are left alone", func(t *testing.T) {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: ns},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: demo.AppImage}}},
		}
		got, err := s.env.Kube.CoreV1().Pods(ns).Create(s.ctx, p, metav1.CreateOptions{})
		must(t, err)
		if len(got.Spec.InitContainers) != 0 || len(got.Spec.Containers) != 1 || len(got.Spec.Containers[0].Env) != 0 {
			t.Errorf("an unannotated pod was changed: %+v", got.Spec)
		}
		_ = s.env.Kube.CoreV1().Pods(ns).Delete(s.ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
}

func (s *suite) injection(t *testing.T) {
	e := s.env
	pod, err := e.DeployApp(s.ctx, demo.AppSpec{Namespace: ns, Name: "shop", Credential: credName,
		Mutate: func(t *corev1.PodTemplateSpec) {
			// An init container of the app's own: the sidecar must come after it.
			t.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: demo.AppImage, Command: []string{"node"}, Args: []string{"-e", "process.exit(0)"}}}
		}})
	s.pod = pod
	if pod == nil || pod.Created == nil {
		must(t, err)
	}
	stored := pod.Created
	t.Run("as stored", func(t *testing.T) {
		ic := stored.Spec.InitContainers
		if len(ic) != 2 || ic[0].Name != "setup" || ic[1].Name != demo.SidecarContainer {
			t.Fatalf("init containers = %v, want [setup %s] (the sidecar after the pod's own)", names(ic), demo.SidecarContainer)
		}
		sc := ic[1]
		if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("sidecar restartPolicy = %v, want Always (native sidecar)", sc.RestartPolicy)
		}
		if sc.Image != demo.SidecarImage {
			t.Errorf("sidecar image = %q, want the manager's --sidecar-image %q", sc.Image, demo.SidecarImage)
		}
		for _, want := range []string{
			fmt.Sprintf("--listen=127.0.0.1:%d", pod.ProxyPort),
			fmt.Sprintf("--ops-listen=:%d", pod.OpsPort),
			"--credentials-dir=/var/run/falguard/credentials",
		} {
			if !slices.Contains(sc.Args, want) {
				t.Errorf("sidecar args %v lack %q", sc.Args, want)
			}
		}
		if p := sc.StartupProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/startupz" || p.HTTPGet.Port.IntValue() != pod.OpsPort {
			t.Errorf("sidecar startupProbe = %+v, want GET /startupz on %d", p, pod.OpsPort)
		}
		if !hasEnvPrefix(sc.Env, "FALGUARD_UPSTREAM_OVERRIDE", "https://") {
			t.Errorf("sidecar env lacks FALGUARD_UPSTREAM_OVERRIDE from --sidecar-env: %v", sc.Env)
		}
		var vol *corev1.Volume
		for i := range stored.Spec.Volumes {
			if v := &stored.Spec.Volumes[i]; v.Secret != nil && v.Secret.SecretName == falguardv1alpha1.ManagedSecretName(credName) {
				vol = v
			}
		}
		if vol == nil {
			t.Fatalf("no volume of Secret %s in %v", falguardv1alpha1.ManagedSecretName(credName), stored.Spec.Volumes)
		}
		if len(sc.VolumeMounts) != 1 || sc.VolumeMounts[0].Name != vol.Name || !sc.VolumeMounts[0].ReadOnly {
			t.Errorf("sidecar mounts = %+v, want %s read-only", sc.VolumeMounts, vol.Name)
		}
		sec := sc.SecurityContext
		if sec == nil || !ptr.Deref(sec.RunAsNonRoot, false) || !ptr.Deref(sec.ReadOnlyRootFilesystem, false) || ptr.Deref(sec.AllowPrivilegeEscalation, true) {
			t.Errorf("sidecar securityContext = %+v, want non-root, read-only root fs, no privilege escalation", sec)
		}
		app := stored.Spec.Containers[0]
		for _, m := range append(app.VolumeMounts, ic[0].VolumeMounts...) {
			if m.Name == vol.Name {
				t.Errorf("container mounts the credentials volume; only the sidecar may")
			}
		}
		wantEnv := map[string]string{
			"FAL_PROXY_URL":    fmt.Sprintf("http://127.0.0.1:%d/api/fal/proxy", pod.ProxyPort),
			"FAL_TOKEN_URL":    fmt.Sprintf("http://127.0.0.1:%d/api/fal/token", pod.ProxyPort),
			"FAL_REALTIME_URL": fmt.Sprintf("ws://127.0.0.1:%d/realtime", pod.ProxyPort),
		}
		for k, v := range wantEnv {
			if got := envValue(app.Env, k); got != v {
				t.Errorf("app env %s = %q, want %q", k, got, v)
			}
		}
		for _, ev := range app.Env {
			if strings.HasPrefix(ev.Name, "FAL_KEY") || ev.ValueFrom != nil && ev.ValueFrom.SecretKeyRef != nil {
				t.Errorf("app env %s carries a secret", ev.Name)
			}
		}
		if stored.Labels[falguardv1alpha1.LabelCredential] != credName || stored.Annotations["falguard.dev/status"] != "injected" {
			t.Errorf("labels %v / annotations %v lack the injection marks", stored.Labels, stored.Annotations)
		}
	})
	must(t, err) // the pod must also have run
	t.Run("sidecar started from that spec is ready", func(t *testing.T) {
		for _, path := range []string{"/startupz", "/readyz", "/livez"} {
			if err := httpGet(s.ctx, pod.OpsURL()+path); err != nil {
				t.Errorf("sidecar %s: %v", path, err)
			}
		}
		got, err := e.Kube.CoreV1().Pods(ns).Get(s.ctx, stored.Name, metav1.GetOptions{})
		must(t, err)
		if got.Spec.NodeName != demo.NodeName || got.Status.Phase != corev1.PodRunning || !podReady(got) {
			t.Errorf("pod node=%q phase=%s ready=%v, want bound, Running, Ready", got.Spec.NodeName, got.Status.Phase, podReady(got))
		}
		dir := pod.CredentialsDir()
		if link, err := os.Readlink(dir + "/..data"); err != nil || !strings.HasPrefix(link, "..20") {
			t.Errorf("credentials volume has no kubelet ..data link: %q, %v", link, err)
		}
		id, err := pod.VolumeKeyID()
		must(t, err)
		if id != demo.KeyID(s.userKey0) {
			t.Errorf("volume key id = %s, want %s", id, demo.KeyID(s.userKey0))
		}
	})
}

func (s *suite) clientFlows(t *testing.T) {
	e, app := s.env, s.pod.App
	since := time.Now()
	t.Run("fal.run through the proxy", func(t *testing.T) {
		var r demo.RunReply
		must(t, app.Call(s.ctx, "run", map[string]any{"app": modelApp, "input": map[string]any{"prompt": "x", "seq": 7}}, &r))
		if r.Data["prompt"] != "x" || r.RequestID == "" {
			t.Errorf("fal.run result = %+v, want fakefal's echo with a request id", r)
		}
		calls := e.FalCallsSince(since, fakefal.HostRun, "/"+modelApp)
		if len(calls) == 0 || calls[len(calls)-1].KeyID != demo.KeyID(s.userKey0) {
			t.Errorf("fakefal calls %+v: want one authenticated with the credential's key", calls)
		}
	})
	t.Run("fal.subscribe through the queue", func(t *testing.T) {
		var r demo.RunReply
		must(t, app.Call(s.ctx, "subscribe", map[string]any{"app": modelApp, "input": map[string]any{"prompt": "q"}}, &r))
		if r.Data["prompt"] != "q" || !slices.Contains(r.Updates, "COMPLETED") {
			t.Errorf("subscribe = %+v, want the echo after a COMPLETED status", r)
		}
	})
	t.Run("fal.stream (SSE) through the proxy", func(t *testing.T) {
		var r demo.RunReply
		must(t, app.Call(s.ctx, "stream", map[string]any{"app": modelApp, "input": map[string]any{"prompt": "s", "num_events": 3}}, &r))
		if r.Events < 3 {
			t.Errorf("stream gave %d events, want 3", r.Events)
		}
	})
	t.Run("token endpoint", func(t *testing.T) {
		var r demo.TokenReply
		must(t, app.Call(s.ctx, "token", map[string]any{"app": rtApp}, &r))
		if !r.HasToken || r.ExpiresAt == nil {
			t.Errorf("token reply = %+v, want a JWT and its expiry", r)
		}
	})
	for _, mode := range []string{"provider", "proxy"} {
		t.Run("realtime through the relay, token via "+mode, func(t *testing.T) {
			conn := "rt-" + mode
			must(t, app.Call(s.ctx, "rt-open", map[string]any{"conn": conn, "app": rtApp, "tokenMode": mode}, nil))
			for i := 1; i <= 3; i++ {
				must(t, app.Call(s.ctx, "rt-send", map[string]any{"conn": conn, "input": map[string]any{"prompt": "p", "seq": i}}, nil))
				var st demo.RTStats
				must(t, app.Call(s.ctx, "rt-wait", map[string]any{"conn": conn, "results": i, "timeoutMs": 15000}, &st))
				if st.Results != i || st.ErrorCount != 0 || st.Distinct != i {
					t.Fatalf("after %d frames: %+v", i, st)
				}
			}
			must(t, app.Call(s.ctx, "rt-close", map[string]any{"conn": conn}, nil))
		})
	}
	t.Run("an app outside allowedApps is refused by the sidecar", func(t *testing.T) {
		before := len(e.FalCallsSince(since, fakefal.HostRun, "/other-org/"))
		err := app.Call(s.ctx, "run", map[string]any{"app": "other-org/some-model", "input": map[string]any{}}, nil)
		var ae *demo.AppError
		if !errors.As(err, &ae) || ae.Status < 400 || ae.Status >= 500 || !strings.Contains(ae.Message, "other-org/some-model") {
			t.Errorf("run of a disallowed app = %v, want a 4xx the client shows with a message naming the app", err)
		}
		if after := len(e.FalCallsSince(since, fakefal.HostRun, "/other-org/")); after != before {
			t.Errorf("the disallowed call reached fal")
		}
	})
}

func (s *suite) sourceSecretChange(t *testing.T) {
	e, pod := s.env, s.pod
	sidecar := pod.Running.Container(demo.SidecarContainer)
	pid := sidecar.Proc().Pid()
	writes := len(pod.Running.VolumeWrites())
	must(t, e.UpdateSecretKey(s.ctx, ns, userSecret, "FAL_KEY", s.userKey1))

	_, err := e.WaitCredential(s.ctx, ns, credName, 30*time.Second, "the new source key", func(fc *falguardv1alpha1.FalCredential) bool {
		return fc.Status.KeyID == demo.KeyID(s.userKey1)
	})
	must(t, err)
	s.waitVolumeKey(t, demo.KeyID(s.userKey1))
	if n := len(pod.Running.VolumeWrites()); n <= writes {
		t.Errorf("volume writes %d -> %d: the kubelet emulator did not rewrite the volume", writes, n)
	}
	s.waitSidecarKey(t, demo.KeyID(s.userKey1))
	if got := sidecar.Proc().Pid(); got != pid || sidecar.RestartCount() != 0 {
		t.Errorf("the sidecar restarted (pid %d -> %d, restarts %d); it must reload in place", pid, got, sidecar.RestartCount())
	}
}

// sidecarRestart kills the sidecar as an OOM kill would; the native sidecar's
// restartPolicy: Always brings it back (the emulated kubelet restarts it), and
// the new process starts from the rewritten volume with the current key.
func (s *suite) sidecarRestart(t *testing.T) {
	sc := s.pod.Running.Container(demo.SidecarContainer)
	old := sc.Proc()
	old.Signal(syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for sc.RestartCount() < 1 || sc.Proc() == old || demo.HTTPOK(s.ctx, s.pod.OpsURL()+"/readyz") != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar was not restarted and ready within 30s (restarts %d)", sc.RestartCount())
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.waitSidecarKey(t, demo.KeyID(s.userKey1))
}

// rotations: traffic runs throughout a forced rotation (user key -> A), a
// manager restart, the scheduled rotation (A -> B), a second restart while
// A's revocation is pending, and A's revocation. Nothing may fail or drop.
func (s *suite) rotations(t *testing.T) {
	e, pod, app := s.env, s.pod, s.pod.App
	must(t, app.Call(s.ctx, "traffic-start", map[string]any{"app": modelApp, "rtApp": rtApp, "everyMs": 250}, nil))
	trafficRunning := true
	defer func() {
		if trafficRunning {
			_ = app.Call(context.Background(), "traffic-stop", map[string]any{"settleMs": 1000}, nil)
		}
	}()
	time.Sleep(time.Second)

	// Forced rotation: the user's key is replaced by one the operator creates.
	_, err := e.ForceRotation(s.ctx, ns, credName)
	must(t, err)
	fc, err := e.WaitCredential(s.ctx, ns, credName, time.Minute, "a key created by the forced rotation", func(fc *falguardv1alpha1.FalCredential) bool {
		return fc.Status.KeySource == falguardv1alpha1.KeySourceOperator && fc.Status.KeyID != demo.KeyID(s.userKey1)
	})
	must(t, err)
	forcedAt := time.Now()
	idA := fc.Status.KeyID
	s.waitVolumeKey(t, idA)
	s.keyA, err = pod.VolumeKey()
	must(t, err)
	s.waitSidecarKey(t, idA)
	if fc.Status.NextRotationTime == nil {
		t.Errorf("status.nextRotationTime is not set after a rotation")
	}

	env := s.env
	env.Steps.Say("restarting the manager while the next rotation is pending")
	must(t, e.RestartManager(s.ctx))

	// Scheduled rotation, by the restarted manager: A -> B with no annotation.
	fc, err = e.WaitCredential(s.ctx, ns, credName, every+60*time.Second, "the scheduled rotation", func(fc *falguardv1alpha1.FalCredential) bool {
		return fc.Status.KeyID != idA && fc.Status.KeySource == falguardv1alpha1.KeySourceOperator
	})
	must(t, err)
	idB := fc.Status.KeyID
	if fc.Status.PreviousKeyID != idA || fc.Status.PreviousKeyRevokeAt == nil {
		t.Errorf("after the scheduled rotation previousKeyID=%q revokeAt=%v, want %q and a time", fc.Status.PreviousKeyID, fc.Status.PreviousKeyRevokeAt, idA)
	}
	if since := time.Since(forcedAt); since < every-10*time.Second {
		t.Errorf("scheduled rotation came %s after the forced one, before rotation.every (%s)", since, every)
	}
	s.waitVolumeKey(t, idB)
	s.keyB, err = pod.VolumeKey()
	must(t, err)
	s.waitSidecarKey(t, idB)
	if code, err := e.FalStatusForKey(s.ctx, s.keyA); err != nil || code != 200 {
		t.Errorf("during the grace period fal answered %d (%v) for the previous key, want 200", code, err)
	}

	env.Steps.Say("restarting the manager while the old key's revocation is pending")
	must(t, e.RestartManager(s.ctx))

	wctx, cancel := context.WithTimeout(s.ctx, grace+60*time.Second)
	defer cancel()
	for e.FalKeyLive(idA) && wctx.Err() == nil {
		time.Sleep(250 * time.Millisecond)
	}
	if e.FalKeyLive(idA) {
		t.Fatalf("key %s is still live at fal %s after its revokeAt", idA, grace+60*time.Second)
	}
	if code, err := e.FalStatusForKey(s.ctx, s.keyA); err != nil || code != 401 {
		t.Errorf("fal answered %d (%v) for the revoked key, want 401", code, err)
	}
	if code, err := e.FalStatusForKey(s.ctx, s.keyB); err != nil || code != 200 {
		t.Errorf("fal answered %d (%v) for the current key, want 200", code, err)
	}
	if !e.FalKeyLive(demo.KeyID(s.userKey1)) {
		t.Errorf("the user's own key was deleted at fal; only operator-created keys may be")
	}
	var created int
	for _, c := range e.FalCallsSince(time.Time{}, fakefal.HostAPI, "/v1/keys") {
		if c.Method == "POST" {
			created++
		}
	}
	if live := e.KeysCreatedByOperator(); created != 2 || len(live) != 1 || live[0].KeyID != idB {
		t.Errorf("keys created at fal: %d (want 2: A and B), live operator keys %+v (want only B): a restart leaked or duplicated a key", created, live)
	}
	// Let a few more beats run on B after the revocation, then stop.
	time.Sleep(time.Second)
	var st demo.TrafficStats
	must(t, app.Call(s.ctx, "traffic-stop", map[string]any{"settleMs": 5000}, &st))
	trafficRunning = false
	env.Steps.Say("traffic: %s", st.Summary())
	if st.ProxyFailed != 0 {
		t.Errorf("%d proxied requests failed during the rotations: %+v", st.ProxyFailed, st.ProxyErrors)
	}
	if st.Realtime.ErrorCount != 0 || st.Realtime.Results != st.Realtime.Sent {
		t.Errorf("realtime: %d sent, %d results, errors %+v; want every frame answered", st.Realtime.Sent, st.Realtime.Results, st.Realtime.Errors)
	}
	if st.SocketsDuring.Opened != 0 || st.SocketsDuring.Closed != 0 {
		t.Errorf("the realtime connection dropped: %d sockets opened, %d closed during the rotations (%+v)", st.SocketsDuring.Opened, st.SocketsDuring.Closed, st.SocketsDuring.Closes)
	}
	if st.ProxyOK < 100 {
		t.Errorf("only %d proxied requests ran: the traffic did not span the rotations", st.ProxyOK)
	}
	// What `kubectl describe falcred` shows a person: the rotations and the
	// revocation as events.
	evs, err := e.Kube.CoreV1().Events(ns).List(s.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + credName})
	must(t, err)
	reasons := map[string]int{}
	var texts []string
	for _, ev := range evs.Items {
		reasons[ev.Reason] += int(max(ev.Count, 1))
		texts = append(texts, ev.Reason+": "+ev.Message)
	}
	s.eventsText = strings.Join(texts, "\n")
	if reasons["KeyRotated"] < 2 || reasons["KeyRevoked"] < 1 {
		t.Errorf("FalCredential events %v: want KeyRotated twice and KeyRevoked", reasons)
	}

	// The realtime session's fal side was opened with a key that is now
	// revoked; fal must have seen traffic keyed by both A and B.
	seen := map[string]bool{}
	for _, c := range e.FalCallsSince(forcedAt.Add(-time.Second), fakefal.HostRun, "/"+modelApp) {
		seen[c.KeyID] = true
	}
	if !seen[idA] || !seen[idB] {
		t.Errorf("fal saw proxied calls with keys %v, want both %s and %s", seen, idA, idB)
	}
}

func (s *suite) injectAfterRestart(t *testing.T) {
	tmpl := demo.NewAppTemplate(demo.AppSpec{Namespace: ns, Name: "late", Credential: credName}, 20000, 20001)
	_, _, pod, err := s.env.CreatePodLikeReplicaSet(s.ctx, demo.AppSpec{Namespace: ns, Name: "late", Credential: credName}, tmpl)
	must(t, err)
	if len(pod.Spec.InitContainers) != 1 || pod.Spec.InitContainers[0].Name != demo.SidecarContainer {
		t.Errorf("pod created after the manager restarts has init containers %v, want the sidecar", names(pod.Spec.InitContainers))
	}
}

func (s *suite) deleteRevokes(t *testing.T) {
	e := s.env
	fc, err := e.GetCredential(s.ctx, ns, credName)
	must(t, err)
	idB := fc.Status.KeyID
	must(t, e.Client.Delete(s.ctx, fc))
	wctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	for wctx.Err() == nil {
		if _, err := e.GetCredential(wctx, ns, credName); apierrors.IsNotFound(unwrap(err)) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := e.GetCredential(s.ctx, ns, credName); !apierrors.IsNotFound(unwrap(err)) {
		t.Fatalf("FalCredential still present 30s after deletion (finalizer stuck?): %v", err)
	}
	if e.FalKeyLive(idB) {
		t.Errorf("operator-created key %s is still live at fal after its FalCredential was deleted", idB)
	}
	if code, err := e.FalStatusForKey(s.ctx, s.keyB); err != nil || code != 401 {
		t.Errorf("fal answered %d (%v) for the deleted credential's key, want 401", code, err)
	}
	if !e.FalKeyLive(demo.KeyID(s.userKey1)) {
		t.Errorf("the user's own key was deleted at fal with the FalCredential")
	}
}

// noSecretsLeaked scans every falguard process's full log and the metrics
// for the secret half of every key used and for anything shaped like a JWT.
func (s *suite) noSecretsLeaked(t *testing.T) {
	secrets := map[string]string{}
	for label, key := range map[string]string{"user key 0": s.userKey0, "user key 1": s.userKey1, "operator key A": s.keyA, "operator key B": s.keyB, "admin key": s.env.AdminKey} {
		if _, secret, ok := strings.Cut(key, ":"); ok && len(secret) >= 16 {
			secrets[label] = secret
		}
	}
	if len(secrets) != 5 {
		t.Fatalf("expected 5 keys to look for, have %d", len(secrets))
	}
	jwt := regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.`)
	texts := map[string]string{}
	for _, f := range s.env.LogFiles() {
		b, err := os.ReadFile(f)
		must(t, err)
		texts[f] = string(b)
	}
	if m, err := s.pod.SidecarMetrics(s.ctx); err == nil {
		texts["sidecar /metrics"] = m
		if v := metricValue(m, "falguard_sidecar_credential_reload_errors_total"); v != 0 {
			t.Errorf("sidecar refused %v credential updates; every update in this story was valid", v)
		}
		// Counted since the restart in sidecarRestart: its start and the two rotations.
		if v := metricValue(m, "falguard_sidecar_credential_reloads_total"); v < 3 {
			t.Errorf("sidecar loaded its credentials %v times since its restart, want at least 3 (start, two rotations)", v)
		}
	} else {
		t.Errorf("sidecar metrics: %v", err)
	}
	texts["FalCredential events"] = s.eventsText
	if m, err := s.env.ManagerMetrics(s.ctx); err == nil {
		texts["manager /metrics"] = m
	} else {
		t.Errorf("manager metrics: %v", err)
	}
	if len(texts) < 6 {
		t.Fatalf("only %d logs and metrics to scan", len(texts))
	}
	for where, text := range texts {
		for label, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("%s contains the secret half of the %s", where, label)
			}
		}
		if jwt.MatchString(text) {
			t.Errorf("%s contains a JWT", where)
		}
	}
}

// metricValue sums the samples of an unlabelled or labelled metric.
func metricValue(text, name string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// waitVolumeKey waits until the emulated Secret volume holds keyID.
func (s *suite) waitVolumeKey(t *testing.T, keyID string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		id, err := s.pod.VolumeKeyID()
		if err == nil && id == keyID {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the credentials volume holds key %s (%v), want %s after 30s", id, err, keyID)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitSidecarKey makes proxied calls until fal sees them with keyID.
func (s *suite) waitSidecarKey(t *testing.T, keyID string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		since := time.Now()
		var r demo.RunReply
		if err := s.pod.App.Call(s.ctx, "run", map[string]any{"app": modelApp, "input": map[string]any{"probe": true}}, &r); err != nil {
			t.Fatalf("proxied call while waiting for key %s: %v", keyID, err)
		}
		calls := s.env.FalCallsSince(since.Add(-time.Millisecond), fakefal.HostRun, "/"+modelApp)
		if len(calls) > 0 && calls[len(calls)-1].KeyID == keyID {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s the sidecar still calls fal with another key than %s", keyID)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func unwrap(err error) error {
	for err != nil {
		if _, ok := err.(apierrors.APIStatus); ok {
			return err
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
	return nil
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func envValue(env []corev1.EnvVar, name string) string {
	for _, e := range env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func hasEnvPrefix(env []corev1.EnvVar, name, prefix string) bool {
	return strings.HasPrefix(envValue(env, name), prefix)
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func httpGet(ctx context.Context, url string) error {
	return demo.HTTPOK(ctx, url)
}
