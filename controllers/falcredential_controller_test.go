package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/hack/fakefal"
	"github.com/falguard/falguard/internal/falapi"
	"github.com/falguard/falguard/sidecar/policy"
)

func userCred(ns, name, secret string) *falguardv1alpha1.FalCredential {
	return &falguardv1alpha1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: falguardv1alpha1.FalCredentialSpec{
			SecretRef:   &falguardv1alpha1.SecretKeySelector{Name: secret, Key: "FAL_KEY"},
			AllowedApps: []string{"fal-ai/fast-lcm-diffusion", "fal-ai/flux/*"},
		},
	}
}

func rotatingCred(ns, name string, grace time.Duration) *falguardv1alpha1.FalCredential {
	return &falguardv1alpha1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: falguardv1alpha1.FalCredentialSpec{
			AllowedApps: []string{"fal-ai/fast-lcm-diffusion"},
			Rotation: &falguardv1alpha1.RotationSpec{
				AdminSecretRef: falguardv1alpha1.SecretKeySelector{Name: "fal-admin", Key: "FAL_ADMIN_KEY"},
				Every:          metav1.Duration{Duration: time.Hour},
				GracePeriod:    metav1.Duration{Duration: grace},
			},
		},
	}
}

func adminSecret(ns string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "fal-admin"}, Data: map[string][]byte{"FAL_ADMIN_KEY": []byte(adminKey)}}
}

func tokenCallsBy(keyID string) int {
	n := 0
	for _, c := range fal.Calls() {
		if c.Host == fakefal.HostRest && c.Path == "/tokens/" && c.KeyID == keyID {
			n++
		}
	}
	return n
}

func managedKeyID(ns, name string) (string, error) {
	sec, err := getManaged(ns, name)
	if err != nil {
		return "", err
	}
	id, _, err := falapi.ParseKey(string(sec.Data[policy.KeyFile]))
	return id, err
}

func annotate(t *testing.T, ns, name, key, value string) {
	t.Helper()
	fc := getFC(t, ns, name)
	patch := client.MergeFrom(fc.DeepCopy())
	if fc.Annotations == nil {
		fc.Annotations = map[string]string{}
	}
	fc.Annotations[key] = value
	if err := k8s.Patch(context.Background(), fc, patch); err != nil {
		t.Fatal(err)
	}
}

// assertNoLeak fails if any status or event of ns holds one of the secrets.
func assertNoLeak(t *testing.T, ns string, secrets ...string) {
	t.Helper()
	ctx := context.Background()
	fcs := &falguardv1alpha1.FalCredentialList{}
	evs := &eventsv1.EventList{}
	if err := k8s.List(ctx, fcs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if err := k8s.List(ctx, evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	b1, _ := json.Marshal(fcs)
	b2, _ := json.Marshal(evs)
	for _, s := range secrets {
		if strings.Contains(string(b1), s) || strings.Contains(string(b2), s) {
			t.Fatalf("a status or event in %s holds key material", ns)
		}
	}
}

func TestPublishVerifyFollowAndRestore(t *testing.T) {
	needEnv(t)
	ctx := context.Background()
	ns := newNamespace(t, "publish")
	fal.AddKey("kid-pub1:SECRETpub1")
	fal.AddKey("kid-pub2:SECRETpub2")
	fc := userCred(ns, "shop", "fal-key")
	fc.Spec.Token.TTL = metav1.Duration{Duration: 60 * time.Second}
	q := resource.MustParse("1Mi")
	fc.Spec.Proxy = falguardv1alpha1.ProxySpec{MaxRequestBytes: &q, RequestsPerSecond: 5, Burst: 10, AllowedOrigins: []string{"https://shop.example"}}
	create(t, keySecret(ns, "fal-key", "kid-pub1:SECRETpub1\n"), fc)
	startManager(t, ns, nil)

	got := waitCond(t, ns, "shop", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	if err := condIs(got, falguardv1alpha1.ConditionKeyVerified, metav1.ConditionTrue, ReasonKeyAccepted); err != nil {
		t.Fatal(err)
	}
	if got.Status.KeyID != "kid-pub1" || got.Status.KeySource != falguardv1alpha1.KeySourceUser || got.Status.SecretName != "falguard-shop" {
		t.Fatalf("status: %+v", got.Status)
	}
	if controllerutil.ContainsFinalizer(got, falguardv1alpha1.Finalizer) {
		t.Fatal("a credential without rotation got a finalizer")
	}
	sec, err := getManaged(ns, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if string(sec.Data["key"]) != "kid-pub1:SECRETpub1" {
		t.Fatal("managed Secret does not hold the trimmed source key")
	}
	p, err := policy.Parse(sec.Data["policy.json"])
	if err != nil {
		t.Fatal(err)
	}
	if p.Credential != ns+"/shop" || p.KeyID != "kid-pub1" || len(p.AllowedApps) != 2 || p.TokenTTLSeconds != 60 ||
		p.MaxRequestBytes != 1<<20 || p.RateLimit.RequestsPerSecond != 5 || p.RateLimit.Burst != 10 || p.CORS.AllowedOrigins[0] != "https://shop.example" {
		t.Fatalf("policy: %+v", p)
	}
	if sec.Labels[LabelManagedBy] != ManagedByValue || sec.Annotations[AnnContentHash] == "" || !ownedBy(sec, got.UID) {
		t.Fatalf("managed Secret metadata: labels %v annotations %v owners %v", sec.Labels, sec.Annotations, sec.OwnerReferences)
	}
	if n := tokenCallsBy("kid-pub1"); n != 1 {
		t.Fatalf("verification minted %d tokens with kid-pub1, want 1", n)
	}
	if v := testutil.ToFloat64(credentialReady.WithLabelValues(ns, "shop")); v != 1 {
		t.Fatalf("falguard_credential_ready = %v", v)
	}
	hash1 := sec.Annotations[AnnContentHash]

	// The source Secret changes (a person, or External Secrets): the managed Secret follows.
	src := &corev1.Secret{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "fal-key"}, src); err != nil {
		t.Fatal(err)
	}
	src.Data["FAL_KEY"] = []byte("kid-pub2:SECRETpub2")
	if err := k8s.Update(ctx, src); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "managed Secret follows the source", func() error {
		fc := getFC(t, ns, "shop")
		if fc.Status.KeyID != "kid-pub2" {
			return fmt.Errorf("status keyID %s", fc.Status.KeyID)
		}
		if err := condIs(fc, falguardv1alpha1.ConditionKeyVerified, metav1.ConditionTrue, ReasonKeyAccepted); err != nil {
			return err
		}
		id, err := managedKeyID(ns, "shop")
		if id != "kid-pub2" {
			return fmt.Errorf("managed key %s: %w", id, err)
		}
		return nil
	})
	sec, _ = getManaged(ns, "shop")
	if sec.Annotations[AnnContentHash] == hash1 {
		t.Fatal("content hash did not change with the key")
	}

	// Deleted by hand: restored.
	if err := k8s.Delete(ctx, sec); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "deleted managed Secret restored", func() error {
		id, err := managedKeyID(ns, "shop")
		if id != "kid-pub2" {
			return fmt.Errorf("managed key %q: %w", id, err)
		}
		return nil
	})
	// Edited by hand: restored.
	sec, _ = getManaged(ns, "shop")
	sec.Data["key"] = []byte("evil:x")
	sec.Data["extra"] = []byte("x")
	delete(sec.Labels, LabelManagedBy)
	if err := k8s.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "edited managed Secret restored", func() error {
		s, err := getManaged(ns, "shop")
		if err != nil {
			return err
		}
		if string(s.Data["key"]) != "kid-pub2:SECRETpub2" || s.Data["extra"] != nil || s.Labels[LabelManagedBy] != ManagedByValue {
			return fmt.Errorf("not restored yet")
		}
		return nil
	})
	// Spec change: policy follows.
	cur := getFC(t, ns, "shop")
	cur.Spec.AllowedApps = []string{"fal-ai/other"}
	if err := k8s.Update(ctx, cur); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "policy follows the spec", func() error {
		s, err := getManaged(ns, "shop")
		if err != nil {
			return err
		}
		p, err := policy.Parse(s.Data["policy.json"])
		if err != nil || len(p.AllowedApps) != 1 || p.AllowedApps[0] != "fal-ai/other" {
			return fmt.Errorf("policy %+v: %w", p, err)
		}
		return condIs(getFC(t, ns, "shop"), falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	})
	// Restores and spec changes did not re-verify an unchanged key.
	if n := tokenCallsBy("kid-pub2"); n != 1 {
		t.Fatalf("verification minted %d tokens with kid-pub2, want 1", n)
	}
	ev := eventReasons(t, ns, "shop")
	if _, ok := ev[ReasonKeyPublished]; !ok {
		t.Fatalf("no KeyPublished event: %v", ev)
	}
	assertNoLeak(t, ns, "SECRETpub1", "SECRETpub2")
}

func TestKeyProblems(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t, "problems")
	fal.AddKey("kid-ok:SECRETok")
	fal.AddKey("kid-flaky:SECRETflaky")
	create(t,
		userCred(ns, "nosecret", "does-not-exist"),
		keySecret(ns, "wrongkey", "kid-ok:SECRETok"), userCred(ns, "missing", "wrongkey"),
		keySecret(ns, "malformed", "no-colon-here"), userCred(ns, "malformed", "malformed"),
		keySecret(ns, "ghost", "ghost:SECRETghost"), userCred(ns, "rejected", "ghost"),
	)
	// "missing" points at a key name the Secret does not have.
	m := getFC(t, ns, "missing")
	m.Spec.SecretRef.Key = "OTHER"
	if err := k8s.Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	startManager(t, ns, nil)

	tests := []struct {
		name, reason string
		kv           metav1.ConditionStatus
		published    bool
		msgHas       string
	}{
		{name: "nosecret", reason: ReasonSecretNotFound, msgHas: "does-not-exist"},
		{name: "missing", reason: ReasonKeyMissing, msgHas: `"OTHER"`},
		{name: "malformed", reason: ReasonKeyMalformed, msgHas: "key_id:key_secret"},
		{name: "rejected", reason: ReasonKeyRejected, kv: metav1.ConditionFalse, published: true, msgHas: "401"},
		{name: "unreachable", reason: ReasonFalUnreachable, kv: metav1.ConditionUnknown, published: true, msgHas: "503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "unreachable" {
				// fal answers 503 to every token request while this one is created
				waitCond(t, ns, "rejected", falguardv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonKeyRejected)
				fal.SetFault(fakefal.Fault{Host: fakefal.HostRest, PathPrefix: "/tokens/", Status: 503})
				create(t, keySecret(ns, "flaky", "kid-flaky:SECRETflaky"), userCred(ns, "unreachable", "flaky"))
			}
			fc := waitCond(t, ns, tt.name, falguardv1alpha1.ConditionReady, metav1.ConditionFalse, tt.reason)
			ready := fc.Status.Conditions[0]
			for _, c := range fc.Status.Conditions {
				if c.Type == falguardv1alpha1.ConditionReady {
					ready = c
				}
			}
			if !strings.Contains(ready.Message, tt.msgHas) {
				t.Fatalf("Ready message %q lacks %q", ready.Message, tt.msgHas)
			}
			if tt.kv != "" {
				if err := condIs(fc, falguardv1alpha1.ConditionKeyVerified, tt.kv, tt.reason); err != nil {
					t.Fatal(err)
				}
			}
			_, err := getManaged(ns, tt.name)
			if tt.published != (err == nil) {
				t.Fatalf("managed Secret published=%v, want %v (%v)", err == nil, tt.published, err)
			}
			if v := testutil.ToFloat64(credentialReady.WithLabelValues(ns, tt.name)); v != 0 {
				t.Fatalf("falguard_credential_ready = %v", v)
			}
			if _, ok := eventReasons(t, ns, tt.name)[tt.reason]; !ok {
				t.Fatalf("no %s event", tt.reason)
			}
		})
	}
	// Fixing things recovers without touching the FalCredential.
	fal.ClearFaults()
	create(t, keySecret(ns, "does-not-exist", "kid-ok:SECRETok"))
	waitCond(t, ns, "nosecret", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	waitCond(t, ns, "unreachable", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	assertNoLeak(t, ns, "SECRETok", "SECRETghost", "SECRETflaky", "no-colon-here")
}

func TestRotation(t *testing.T) {
	needEnv(t)
	ctx := context.Background()
	ns := newNamespace(t, "rotate")
	fal.AddKey("kid-user:SECRETuser")
	seeded := rotatingCred(ns, "seeded", time.Second)
	seeded.Spec.SecretRef = &falguardv1alpha1.SecretKeySelector{Name: "user-key", Key: "FAL_KEY"}
	create(t, adminSecret(ns), keySecret(ns, "user-key", "kid-user:SECRETuser"), rotatingCred(ns, "auto", 2*time.Second), seeded)
	successBefore := testutil.ToFloat64(rotationsTotal.WithLabelValues("success"))
	startManager(t, ns, nil)

	// No secretRef: rotation creates the first key.
	fc := waitCond(t, ns, "auto", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	first := fc.Status.KeyID
	live := liveOperatorKeys(ns, "auto")
	if fc.Status.KeySource != falguardv1alpha1.KeySourceOperator || len(live) != 1 || live[0].KeyID != first {
		t.Fatalf("first key: status %+v, live %+v", fc.Status, live)
	}
	if id, _ := managedKeyID(ns, "auto"); id != first || tokenCallsBy(first) != 1 {
		t.Fatalf("managed key %s, tokens minted with it %d", id, tokenCallsBy(first))
	}
	if !controllerutil.ContainsFinalizer(fc, falguardv1alpha1.Finalizer) || fc.Status.NextRotationTime == nil || fc.Status.LastRotationTime == nil {
		t.Fatalf("finalizer/times: %+v %+v", fc.Finalizers, fc.Status)
	}
	if err := condIs(fc, falguardv1alpha1.ConditionRotation, metav1.ConditionTrue, ""); err != nil {
		t.Fatal(err)
	}
	// The gauge is set before the status write that Ready came from.
	if v, ok := gaugeValue(nextRotation, ns, "auto"); !ok || v != float64(fc.Status.NextRotationTime.Unix()) {
		t.Fatalf("falguard_credential_next_rotation_timestamp_seconds = %v (present %v), want %d", v, ok, fc.Status.NextRotationTime.Unix())
	}
	if v, ok := gaugeValue(previousKeyRevokeAt, ns, "auto"); ok {
		t.Fatalf("revoke-at gauge = %v before any rotation, want no series", v)
	}

	// Forced rotation: new key published, old one alive for the grace period, then deleted.
	annotate(t, ns, "auto", falguardv1alpha1.AnnotationRotateNow, "1")
	var second string
	// The previous key's deadline, as seen in status and in the gauge while
	// the grace period runs; both are fixed for one rotation, so reading
	// them at different moments does not race.
	var wantRevokeAt, gotRevokeAt float64
	watchRevokeAt := func() *falguardv1alpha1.FalCredential {
		if v, ok := gaugeValue(previousKeyRevokeAt, ns, "auto"); ok {
			gotRevokeAt = v
		}
		fc := getFC(t, ns, "auto")
		if fc.Status.PreviousKeyID == first && fc.Status.PreviousKeyRevokeAt != nil {
			wantRevokeAt = float64(fc.Status.PreviousKeyRevokeAt.Unix())
		}
		return fc
	}
	eventually(t, 20*time.Second, "forced rotation", func() error {
		fc = watchRevokeAt()
		if fc.Status.KeyID == first || fc.Status.LastRotateNow != "1" {
			return fmt.Errorf("keyID %s lastRotateNow %q", fc.Status.KeyID, fc.Status.LastRotateNow)
		}
		second = fc.Status.KeyID
		return nil
	})
	if id, _ := managedKeyID(ns, "auto"); id != second {
		t.Fatalf("managed Secret holds %s, status %s", id, second)
	}
	if fc.Status.PreviousKeyID == first {
		if !isLive(first) && time.Now().Before(fc.Status.PreviousKeyRevokeAt.Time) {
			t.Fatal("previous key deleted inside its grace period")
		}
	}
	eventually(t, 20*time.Second, "previous key revoked after grace", func() error {
		fc = watchRevokeAt()
		if isLive(first) || fc.Status.PreviousKeyID != "" {
			return fmt.Errorf("first live=%v previousKeyID=%q", isLive(first), fc.Status.PreviousKeyID)
		}
		return nil
	})
	if wantRevokeAt == 0 || gotRevokeAt != wantRevokeAt {
		t.Fatalf("falguard_credential_previous_key_revoke_at_timestamp_seconds seen as %v during the grace period, status said %v", gotRevokeAt, wantRevokeAt)
	}
	eventually(t, 5*time.Second, "revoke-at gauge deleted after revocation", func() error {
		if v, ok := gaugeValue(previousKeyRevokeAt, ns, "auto"); ok {
			return fmt.Errorf("series still present with %v", v)
		}
		return nil
	})
	if live := liveOperatorKeys(ns, "auto"); len(live) != 1 || live[0].KeyID != second {
		t.Fatalf("live operator keys after revoke: %+v", live)
	}
	ev := eventReasons(t, ns, "auto")
	for _, r := range []string{ReasonKeyRotated, ReasonKeyRevoked, ReasonKeyPublished} {
		if _, ok := ev[r]; !ok {
			t.Fatalf("no %s event: %v", r, ev)
		}
	}
	if got := testutil.ToFloat64(rotationsTotal.WithLabelValues("success")) - successBefore; got < 2 {
		t.Fatalf("falguard_rotations_total{result=success} grew by %v, want >= 2", got)
	}

	// The managed Secret is deleted: the operator key's secret is gone for
	// good, so a new key is created and the lost one deleted after the grace.
	sec, err := getManaged(ns, "auto")
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(ctx, sec); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "lost key replaced and deleted", func() error {
		fc = getFC(t, ns, "auto")
		id, err := managedKeyID(ns, "auto")
		if err != nil || fc.Status.KeyID == second || id != fc.Status.KeyID || isLive(second) || fc.Status.PreviousKeyID != "" {
			return fmt.Errorf("status key %s, managed %s, lost key live %v: %w", fc.Status.KeyID, id, isLive(second), err)
		}
		return condIs(fc, falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	})
	if _, ok := eventReasons(t, ns, "auto")[ReasonKeyLost]; !ok {
		t.Fatal("no OperatorKeyLost event")
	}
	if live := liveOperatorKeys(ns, "auto"); len(live) != 1 {
		t.Fatalf("live operator keys after replacing a lost key: %+v", live)
	}

	// A user-seeded credential: rotation replaces the user's key but never deletes it.
	waitCond(t, ns, "seeded", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	if s := getFC(t, ns, "seeded").Status; s.KeyID != "kid-user" || s.KeySource != falguardv1alpha1.KeySourceUser {
		t.Fatalf("seeded status %+v", s)
	}
	annotate(t, ns, "seeded", falguardv1alpha1.AnnotationRotateNow, "go")
	eventually(t, 20*time.Second, "seeded rotation", func() error {
		s := getFC(t, ns, "seeded").Status
		if s.KeySource != falguardv1alpha1.KeySourceOperator || s.PreviousKeyID != "" {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	time.Sleep(1500 * time.Millisecond) // past the 1s grace: nothing to revoke
	if !isLive("kid-user") {
		t.Fatal("the user-provided key was deleted at fal")
	}

	// Deletion: the finalizer deletes operator-created keys, never the user's.
	for _, name := range []string{"auto", "seeded"} {
		if err := k8s.Delete(ctx, getFC(t, ns, name)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, "finalizer revokes and releases", func() error {
		for _, name := range []string{"auto", "seeded"} {
			err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &falguardv1alpha1.FalCredential{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s still there: %w", name, err)
			}
			if live := liveOperatorKeys(ns, name); len(live) != 0 {
				return fmt.Errorf("%s: operator keys still live: %+v", name, live)
			}
		}
		return nil
	})
	if !isLive("kid-user") {
		t.Fatal("the user-provided key was deleted at fal on deletion")
	}
	eventually(t, 5*time.Second, "per-credential series deleted with the credential", func() error {
		for _, name := range []string{"auto", "seeded"} {
			for metric, g := range map[string]*prometheus.GaugeVec{"ready": credentialReady, "next rotation": nextRotation, "revoke-at": previousKeyRevokeAt} {
				if v, ok := gaugeValue(g, ns, name); ok {
					return fmt.Errorf("%s: %s series still present with %v", name, metric, v)
				}
			}
		}
		return nil
	})
	if _, err := getManaged(ns, "auto"); !apierrors.IsNotFound(err) {
		t.Fatalf("managed Secret of a deleted credential still holds a revoked key: %v", err)
	}
}

func TestFinalizerWithoutAdminKey(t *testing.T) {
	needEnv(t)
	ctx := context.Background()
	ns := newNamespace(t, "noadmin")
	create(t, adminSecret(ns), rotatingCred(ns, "c", time.Second))
	startManager(t, ns, nil)
	fc := waitCond(t, ns, "c", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	keyID := fc.Status.KeyID

	if err := k8s.Delete(ctx, adminSecret(ns)); err != nil {
		t.Fatal(err)
	}
	waitCond(t, ns, "c", falguardv1alpha1.ConditionRotation, metav1.ConditionFalse, ReasonAdminKeyMissing)
	if err := k8s.Delete(ctx, getFC(t, ns, "c")); err != nil {
		t.Fatal(err)
	}
	fc = waitCond(t, ns, "c", falguardv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonAdminKeyMissing)
	for _, c := range fc.Status.Conditions {
		if c.Type == falguardv1alpha1.ConditionReady && !strings.Contains(c.Message, falguardv1alpha1.AnnotationSkipRevokeOnDelete) {
			t.Fatalf("Ready message does not say how to get out: %q", c.Message)
		}
	}
	annotate(t, ns, "c", falguardv1alpha1.AnnotationSkipRevokeOnDelete, "true")
	eventually(t, 20*time.Second, "skip-revoke releases the credential", func() error {
		err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "c"}, &falguardv1alpha1.FalCredential{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %w", err)
		}
		return nil
	})
	if !isLive(keyID) {
		t.Fatal("skip-revoke-on-delete=true still deleted the key")
	}
}

// TestCrashSafety kills the manager at every step of a rotation and restarts
// it: the credential ends Ready with exactly one live operator-created key,
// no orphan at fal, and the managed Secret never holds a revoked key.
func TestCrashSafety(t *testing.T) {
	needEnv(t)
	ctx := context.Background()
	steps := []string{StepBeforeCreate, StepAfterCreate, StepAfterPublish, StepBeforeRevoke, StepAfterRevoke}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			ns := newNamespace(t, "crash")
			create(t, adminSecret(ns), rotatingCred(ns, "c", time.Second))
			var armed atomic.Bool
			fired := make(chan struct{})
			var once sync.Once
			m1 := startManager(t, ns, func(r *FalCredentialReconciler, cancel context.CancelFunc) {
				r.Hook = func(_ context.Context, _ types.NamespacedName, s string) error {
					if s != step || !armed.Load() {
						return nil
					}
					once.Do(func() { cancel(); close(fired) })
					return errCrash
				}
			})
			fc := waitCond(t, ns, "c", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
			first := fc.Status.KeyID
			armed.Store(true)
			annotate(t, ns, "c", falguardv1alpha1.AnnotationRotateNow, "now")
			select {
			case <-fired:
			case <-time.After(20 * time.Second):
				t.Fatalf("the rotation never reached %s", step)
			}
			t0 := time.Now()
			m1.stop(t)
			t.Logf("manager stopped in %s", time.Since(t0))
			if id, err := managedKeyID(ns, "c"); err != nil || !isLive(id) {
				t.Fatalf("while the manager is down the managed Secret holds key %q (live=%v, %v)", id, isLive(id), err)
			}

			t0 = time.Now()
			startManager(t, ns, nil)
			defer func() { t.Logf("settled in %s", time.Since(t0)) }()
			eventually(t, 30*time.Second, "settles after restart", func() error {
				live := liveOperatorKeys(ns, "c")
				if len(live) > 2 {
					t.Fatalf("%d operator keys alive at fal: orphan leaked (%+v)", len(live), live)
				}
				if id, err := managedKeyID(ns, "c"); err == nil && !isLive(id) {
					t.Fatalf("managed Secret holds revoked key %s", id)
				}
				fc = getFC(t, ns, "c")
				if err := condIs(fc, falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished); err != nil {
					return err
				}
				s := fc.Status
				if s.PendingKeyAlias != "" || s.PreviousKeyID != "" || s.KeyID == first || s.LastRotateNow != "now" {
					return fmt.Errorf("status not settled: %+v", s)
				}
				if len(live) != 1 || live[0].KeyID != s.KeyID {
					return fmt.Errorf("live operator keys %+v, status key %s", live, s.KeyID)
				}
				if id, _ := managedKeyID(ns, "c"); id != s.KeyID {
					return fmt.Errorf("managed key %s, status key %s", id, s.KeyID)
				}
				return nil
			})
			if isLive(first) {
				t.Fatal("the replaced key was never deleted")
			}
			if step == StepAfterCreate {
				eventually(t, 10*time.Second, "OrphanKeyDeleted event", func() error {
					if _, ok := eventReasons(t, ns, "c")[ReasonOrphanKeyDeleted]; !ok {
						return fmt.Errorf("no OrphanKeyDeleted event")
					}
					return nil
				})
			} else if _, ok := eventReasons(t, ns, "c")[ReasonOrphanKeyDeleted]; ok {
				t.Fatalf("OrphanKeyDeleted event at step %s, where no orphan can exist", step)
			}
			// leave nothing for later tests: release the credential without revoking
			annotate(t, ns, "c", falguardv1alpha1.AnnotationSkipRevokeOnDelete, "true")
			_ = k8s.Delete(ctx, getFC(t, ns, "c"))
		})
	}
}

func TestPodCount(t *testing.T) {
	needEnv(t)
	ctx := context.Background()
	ns := newNamespace(t, "pods")
	fal.AddKey("kid-pods:SECRETpods")
	create(t, keySecret(ns, "k", "kid-pods:SECRETpods"), userCred(ns, "web", "k"))
	startManager(t, ns, nil)
	waitCond(t, ns, "web", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)

	pod := func(name, cred string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}},
		}
		if cred != "" {
			p.Labels[falguardv1alpha1.LabelCredential] = cred
		}
		return p
	}
	create(t, pod("a", "web"), pod("b", "web"), pod("c", "web"), pod("other", "elsewhere"), pod("plain", ""))
	wantPods := func(n int32) {
		t.Helper()
		eventually(t, 20*time.Second, fmt.Sprintf("status.pods = %d", n), func() error {
			if got := getFC(t, ns, "web").Status.Pods; got != n {
				return fmt.Errorf("status.pods = %d", got)
			}
			return nil
		})
	}
	wantPods(3)
	if err := k8s.Delete(ctx, pod("a", ""), client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	wantPods(2)
}

// TestScale50 is the quick version of the thousand-credential run.
func TestScale50(t *testing.T) { scaleRun(t, 50) }

// TestScale1000 runs only with FALGUARD_SCALE=1 (about a minute on 2 cores).
func TestScale1000(t *testing.T) {
	if os.Getenv("FALGUARD_SCALE") == "" {
		t.Skip("set FALGUARD_SCALE=1 to reconcile 1000 FalCredentials")
	}
	scaleRun(t, 1000)
}

func scaleRun(t *testing.T, n int) {
	needEnv(t)
	ctx := context.Background()
	ns := newNamespace(t, fmt.Sprintf("scale%d", n))
	tokensBefore := fal.CountCalls(fakefal.HostRest, "/tokens/")
	m := startManager(t, ns, func(r *FalCredentialReconciler, _ context.CancelFunc) {
		r.BackoffBase, r.BackoffMax = 0, 0                         // production defaults
		if v := os.Getenv("FALGUARD_SCALE_VERIFY_RATE"); v != "" { // e.g. 1000 to see the controller's own pace
			fmt.Sscan(v, &r.VerifyRate)
			r.VerifyBurst = int(r.VerifyRate)
		}
	})
	start := time.Now()
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("kid-s%d-%d:SECRET%d", n, i, i)
		fal.AddKey(key)
		create(t, keySecret(ns, fmt.Sprintf("k%d", i), key), userCred(ns, fmt.Sprintf("c%d", i), fmt.Sprintf("k%d", i)))
	}
	created := time.Since(start)
	eventually(t, time.Duration(n)*time.Second/4+60*time.Second, "all Ready", func() error {
		list := &falguardv1alpha1.FalCredentialList{}
		if err := k8s.List(ctx, list, client.InNamespace(ns)); err != nil {
			return err
		}
		ready := 0
		for i := range list.Items {
			if condIs(&list.Items[i], falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished) == nil {
				ready++
			}
		}
		if ready != n {
			return fmt.Errorf("%d/%d Ready", ready, n)
		}
		return nil
	})
	elapsed := time.Since(start)
	tokens := fal.CountCalls(fakefal.HostRest, "/tokens/") - tokensBefore
	t.Logf("%d FalCredentials: created in %s, all Ready after %s; %d token mints (verification rate limit %v/s)", n, created.Round(time.Millisecond), elapsed.Round(time.Millisecond), tokens, m.rec.VerifyRate)
	if tokens != n {
		t.Fatalf("%d verification calls for %d credentials, want exactly one each", tokens, n)
	}
}

func TestRotationFailureBackoff(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t, "rotfail")
	failuresBefore := testutil.ToFloat64(rotationsTotal.WithLabelValues("failure"))
	calls500Before := testutil.ToFloat64(falAPICallsTotal.WithLabelValues(falapi.EndpointKeysCreate, "500"))
	fal.SetFault(fakefal.Fault{Host: fakefal.HostAPI, PathPrefix: "/v1/keys", Status: 500, Times: 3})
	create(t, adminSecret(ns), rotatingCred(ns, "c", time.Second))
	startManager(t, ns, nil)

	fc := waitCond(t, ns, "c", falguardv1alpha1.ConditionReady, metav1.ConditionFalse, ReasonRotationFailed)
	if err := condIs(fc, falguardv1alpha1.ConditionRotation, metav1.ConditionFalse, ""); err != nil {
		t.Fatal(err)
	}
	fc = waitCond(t, ns, "c", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	if live := liveOperatorKeys(ns, "c"); len(live) != 1 || live[0].KeyID != fc.Status.KeyID || fc.Status.PendingKeyAlias != "" {
		t.Fatalf("after recovering from fal errors: live %+v, status %+v", live, fc.Status)
	}
	if d := testutil.ToFloat64(rotationsTotal.WithLabelValues("failure")) - failuresBefore; d < 1 {
		t.Fatal("falguard_rotations_total{result=failure} did not grow")
	}
	if d := testutil.ToFloat64(falAPICallsTotal.WithLabelValues(falapi.EndpointKeysCreate, "500")) - calls500Before; d < 1 {
		t.Fatal("falguard_fal_api_calls_total{endpoint=keys_create,status=500} did not grow")
	}
	if _, ok := eventReasons(t, ns, "c")[ReasonRotationFailed]; !ok {
		t.Fatal("no RotationFailed event")
	}
}

// shiftClock is the wall clock plus an offset the test moves forward.
type shiftClock struct{ off atomic.Int64 }

func (c *shiftClock) Now() time.Time { return time.Now().Add(time.Duration(c.off.Load())) }

// TestScheduledRotationAndRequeue moves the reconciler's clock past
// rotation.every: the key rotates on schedule. Between decisions the
// reconciler asks to be requeued exactly at the next one, and a credential
// without rotation is not requeued at all (no polling).
func TestScheduledRotationAndRequeue(t *testing.T) {
	needEnv(t)
	ctx := context.Background()
	ns := newNamespace(t, "sched")
	fal.AddKey("kid-plain:SECRETplain")
	create(t, adminSecret(ns), rotatingCred(ns, "r", time.Second), keySecret(ns, "k", "kid-plain:SECRETplain"), userCred(ns, "plain", "k"))
	clk := &shiftClock{}
	m := startManager(t, ns, func(r *FalCredentialReconciler, _ context.CancelFunc) { r.Clock = clk })
	fc := waitCond(t, ns, "r", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	waitCond(t, ns, "plain", falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished)
	first := fc.Status.KeyID

	res, err := m.rec.Reconcile(ctx, reconcileRequest(ns, "r"))
	if err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter < 59*time.Minute || res.RequeueAfter > time.Hour {
		t.Fatalf("RequeueAfter = %v, want the time to the next rotation (just under 1h)", res.RequeueAfter)
	}
	if res, err := m.rec.Reconcile(ctx, reconcileRequest(ns, "plain")); err != nil || res.RequeueAfter != 0 {
		t.Fatalf("a credential without rotation asks for requeue %v (%v)", res.RequeueAfter, err)
	}

	clk.off.Store(int64(time.Hour + time.Second))
	annotate(t, ns, "r", "example.com/touch", "1") // wake it up now instead of in an hour
	eventually(t, 20*time.Second, "scheduled rotation and revoke", func() error {
		fc = getFC(t, ns, "r")
		if fc.Status.KeyID == first || isLive(first) || fc.Status.PreviousKeyID != "" {
			return fmt.Errorf("key %s (first %s live=%v), previous %q", fc.Status.KeyID, first, isLive(first), fc.Status.PreviousKeyID)
		}
		return nil
	})
	if ev := eventReasons(t, ns, "r")[ReasonKeyRotated]; !strings.Contains(ev, "Scheduled") {
		t.Fatalf("KeyRotated event %q does not say Scheduled", ev)
	}
	if next := fc.Status.NextRotationTime; next == nil || next.Time.Before(time.Now().Add(time.Hour)) {
		t.Fatalf("nextRotationTime %v not moved an every ahead of the shifted clock", next)
	}
}

func reconcileRequest(ns, name string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}
}

// gaugeValue reads one series without creating it (WithLabelValues would).
func gaugeValue(g *prometheus.GaugeVec, namespace, name string) (float64, bool) {
	ch := make(chan prometheus.Metric, 64)
	go func() { g.Collect(ch); close(ch) }()
	var v float64
	found := false
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			continue
		}
		labels := map[string]string{}
		for _, l := range pb.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["namespace"] == namespace && labels["name"] == name {
			v, found = pb.GetGauge().GetValue(), true
		}
	}
	return v, found
}
