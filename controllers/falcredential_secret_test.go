package controllers

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
)

func TestAppAlias(t *testing.T) {
	tests := []struct {
		apps []string
		want string
	}{
		{[]string{"fal-ai/fast-lcm-diffusion"}, "fast-lcm-diffusion"},
		{[]string{"fal-ai/flux/*", "fal-ai/fast-sdxl"}, "flux"},
		{[]string{"fal-ai/*", "fal-ai/fast-sdxl"}, "fast-sdxl"},
		{[]string{"fal-ai/flux-*"}, "flux"},
		{[]string{"fal-ai/*"}, "realtime"},
	}
	for _, tt := range tests {
		if got := appAlias(tt.apps); got != tt.want {
			t.Errorf("appAlias(%v) = %q, want %q", tt.apps, got, tt.want)
		}
	}
}

func TestDurableRoundTrip(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	d := durable{
		KeyID: "new", Source: falguardv1alpha1.KeySourceOperator, PublishedAt: now,
		PreviousKeyID: "old", PreviousRevokeAt: now.Add(10 * time.Minute), LastRotateNow: "x",
	}
	fc := &falguardv1alpha1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c", UID: "uid-1"},
		Spec:       falguardv1alpha1.FalCredentialSpec{AllowedApps: []string{"fal-ai/x"}},
	}
	sec, err := desiredSecret(fc, "new:s", "new", d)
	if err != nil {
		t.Fatal(err)
	}
	if got := durableFrom(sec, &falguardv1alpha1.FalCredentialStatus{KeyID: "stale"}); got != d {
		t.Fatalf("durableFrom(Secret) = %+v, want %+v", got, d)
	}
	// With the Secret gone, status is the fallback record.
	st := &falguardv1alpha1.FalCredentialStatus{
		KeyID: "new", KeySource: falguardv1alpha1.KeySourceOperator, LastRotationTime: metaTime(now),
		PreviousKeyID: "old", PreviousKeyRevokeAt: metaTime(now.Add(10 * time.Minute)), LastRotateNow: "x",
	}
	if got := durableFrom(nil, st); !got.PublishedAt.Equal(d.PublishedAt) || got.KeyID != "new" || got.PreviousKeyID != "old" || got.LastRotateNow != "x" {
		t.Fatalf("durableFrom(status) = %+v", got)
	}
}

func TestMergeInto(t *testing.T) {
	fc := &falguardv1alpha1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c", UID: "uid-1"},
		Spec:       falguardv1alpha1.FalCredentialSpec{AllowedApps: []string{"fal-ai/x"}},
	}
	want, err := desiredSecret(fc, "k:s", "k", durable{KeyID: "k", Source: falguardv1alpha1.KeySourceUser})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		edit    func(s *corev1.Secret)
		changed bool
	}{
		{"identical", func(*corev1.Secret) {}, false},
		{"foreign label kept", func(s *corev1.Secret) { s.Labels["team"] = "a" }, false},
		{"foreign annotation kept", func(s *corev1.Secret) { s.Annotations["note"] = "a" }, false},
		{"key edited", func(s *corev1.Secret) { s.Data["key"] = []byte("evil:x") }, true},
		{"file added", func(s *corev1.Secret) { s.Data["extra"] = []byte("x") }, true},
		{"managed-by removed", func(s *corev1.Secret) { delete(s.Labels, LabelManagedBy) }, true},
		{"stray falguard annotation", func(s *corev1.Secret) { s.Annotations[AnnPreviousKeyID] = "zzz" }, true},
		{"owner removed", func(s *corev1.Secret) { s.OwnerReferences = nil }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			have := want.DeepCopy()
			tt.edit(have)
			if got := mergeInto(have, want); got != tt.changed {
				t.Fatalf("mergeInto changed=%v, want %v", got, tt.changed)
			}
			if string(have.Data["key"]) != "k:s" || have.Data["extra"] != nil || have.Labels[LabelManagedBy] != ManagedByValue ||
				have.Annotations[AnnPreviousKeyID] != "" || !ownedBy(have, "uid-1") {
				t.Fatalf("not restored: %+v", have)
			}
		})
	}
}

func TestBuildPolicyDefaults(t *testing.T) {
	fc := &falguardv1alpha1.FalCredential{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c"},
		Spec:       falguardv1alpha1.FalCredentialSpec{AllowedApps: []string{"fal-ai/x"}, Proxy: falguardv1alpha1.ProxySpec{RequestsPerSecond: 3}},
	}
	b, err := buildPolicy(fc, "kid")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":1,"credential":"ns/c","keyID":"kid","allowedApps":["fal-ai/x"],"tokenTTLSeconds":120,"maxRequestBytes":33554432,"rateLimit":{"requestsPerSecond":3,"burst":6},"cors":{}}`
	if string(b) != want {
		t.Fatalf("policy.json\n got %s\nwant %s", b, want)
	}
}
