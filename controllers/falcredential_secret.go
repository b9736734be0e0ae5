package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/sidecar/policy"
)

// Labels and annotations on the managed Secret. The annotations are the
// durable record of the key's lifecycle: the managed Secret is the only place
// an operator-created key's secret half lives (fal shows it once), so the
// facts needed to finish or undo a rotation are written in the same object,
// in the same write. Status mirrors them and is rebuilt from them.
const (
	LabelManagedBy      = "app.kubernetes.io/managed-by"
	ManagedByValue      = "falguard"
	AnnContentHash      = "falguard.dev/content-hash"
	AnnKeyID            = "falguard.dev/key-id"
	AnnKeySource        = "falguard.dev/key-source"
	AnnKeyPublishedAt   = "falguard.dev/key-published-at"
	AnnPreviousKeyID    = "falguard.dev/previous-key-id"
	AnnPreviousRevokeAt = "falguard.dev/previous-key-revoke-at"
	AnnLastRotateNow    = "falguard.dev/last-rotate-now"
)

// durable is the key lifecycle state, read from the managed Secret (or, when
// that is gone, from status).
type durable struct {
	KeyID            string
	Source           falguardv1alpha1.KeySource
	PublishedAt      time.Time
	PreviousKeyID    string // operator-created key awaiting deletion
	PreviousRevokeAt time.Time
	LastRotateNow    string
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func metaTime(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	m := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &m
}

// durableFrom reads the lifecycle state from the managed Secret, falling back
// to status fields for anything the Secret does not say (Secret deleted).
func durableFrom(sec *corev1.Secret, st *falguardv1alpha1.FalCredentialStatus) durable {
	if sec != nil && sec.Annotations[AnnKeyID] != "" {
		a := sec.Annotations
		return durable{
			KeyID:            a[AnnKeyID],
			Source:           falguardv1alpha1.KeySource(a[AnnKeySource]),
			PublishedAt:      parseTime(a[AnnKeyPublishedAt]),
			PreviousKeyID:    a[AnnPreviousKeyID],
			PreviousRevokeAt: parseTime(a[AnnPreviousRevokeAt]),
			LastRotateNow:    a[AnnLastRotateNow],
		}
	}
	d := durable{KeyID: st.KeyID, Source: st.KeySource, PreviousKeyID: st.PreviousKeyID, LastRotateNow: st.LastRotateNow}
	if st.LastRotationTime != nil {
		d.PublishedAt = st.LastRotationTime.Time
	}
	if st.PreviousKeyRevokeAt != nil {
		d.PreviousRevokeAt = st.PreviousKeyRevokeAt.Time
	}
	return d
}

func (d durable) annotations() map[string]string {
	m := map[string]string{
		AnnKeyID:          d.KeyID,
		AnnKeySource:      string(d.Source),
		AnnKeyPublishedAt: fmtTime(d.PublishedAt),
	}
	if d.PreviousKeyID != "" {
		m[AnnPreviousKeyID] = d.PreviousKeyID
		m[AnnPreviousRevokeAt] = fmtTime(d.PreviousRevokeAt)
	}
	if d.LastRotateNow != "" {
		m[AnnLastRotateNow] = d.LastRotateNow
	}
	for k, v := range m {
		if v == "" {
			delete(m, k)
		}
	}
	return m
}

// buildPolicy renders the sidecar's policy.json for a credential and key id.
func buildPolicy(fc *falguardv1alpha1.FalCredential, keyID string) ([]byte, error) {
	p := policy.Policy{
		Version:     policy.Version,
		Credential:  fc.Namespace + "/" + fc.Name,
		KeyID:       keyID,
		AllowedApps: append([]string(nil), fc.Spec.AllowedApps...),
		RateLimit: policy.RateLimit{
			RequestsPerSecond: float64(fc.Spec.Proxy.RequestsPerSecond),
			Burst:             int(fc.Spec.Proxy.Burst),
		},
		CORS: policy.CORS{AllowedOrigins: append([]string(nil), fc.Spec.Proxy.AllowedOrigins...)},
	}
	if ttl := fc.Spec.Token.TTL.Duration; ttl > 0 {
		p.TokenTTLSeconds = int(ttl / time.Second)
	}
	if q := fc.Spec.Proxy.MaxRequestBytes; q != nil {
		p.MaxRequestBytes = q.Value()
	}
	p.Default()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p.Marshal()
}

// keyHash identifies a key without revealing it (status.verifiedKeyHash).
func keyHash(key string) string {
	h := sha256.Sum256([]byte("falguard-key\x00" + key))
	return hex.EncodeToString(h[:12])
}

func contentHash(data map[string][]byte) string {
	h := sha256.New()
	for _, k := range []string{policy.KeyFile, policy.PolicyFile} {
		_, _ = fmt.Fprintf(h, "%s\x00%d\x00", k, len(data[k]))
		h.Write(data[k])
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// desiredSecret is the managed Secret for fc holding key, with d recorded.
func desiredSecret(fc *falguardv1alpha1.FalCredential, key string, keyID string, d durable) (*corev1.Secret, error) {
	pol, err := buildPolicy(fc, keyID)
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{policy.KeyFile: []byte(key), policy.PolicyFile: pol}
	ann := d.annotations()
	ann[AnnContentHash] = contentHash(data)
	yes := true
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        falguardv1alpha1.ManagedSecretName(fc.Name),
			Namespace:   fc.Namespace,
			Labels:      map[string]string{LabelManagedBy: ManagedByValue, falguardv1alpha1.LabelCredential: fc.Name},
			Annotations: ann,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: falguardv1alpha1.GroupVersion.String(), Kind: "FalCredential",
				Name: fc.Name, UID: fc.UID, Controller: &yes, BlockOwnerDeletion: &yes,
			}},
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}, nil
}

// mergeInto copies what the controller owns from want into have and reports
// whether anything changed. Labels and annotations others add are kept;
// ours (falguard.dev/*, managed-by) are enforced; data is replaced whole so a
// hand-added file disappears.
func mergeInto(have, want *corev1.Secret) bool {
	changed := false
	if have.Labels == nil {
		have.Labels = map[string]string{}
	}
	for k, v := range want.Labels {
		if have.Labels[k] != v {
			have.Labels[k] = v
			changed = true
		}
	}
	if have.Annotations == nil {
		have.Annotations = map[string]string{}
	}
	for k := range have.Annotations {
		if _, ok := want.Annotations[k]; !ok && strings.HasPrefix(k, "falguard.dev/") {
			delete(have.Annotations, k)
			changed = true
		}
	}
	for k, v := range want.Annotations {
		if have.Annotations[k] != v {
			have.Annotations[k] = v
			changed = true
		}
	}
	if !ownedBy(have, want.OwnerReferences[0].UID) {
		var refs []metav1.OwnerReference
		for _, r := range have.OwnerReferences {
			if r.Controller == nil || !*r.Controller {
				refs = append(refs, r)
			}
		}
		have.OwnerReferences = append(refs, want.OwnerReferences[0])
		changed = true
	}
	if !maps.EqualFunc(have.Data, want.Data, func(a, b []byte) bool { return string(a) == string(b) }) || len(have.StringData) > 0 {
		have.Data, have.StringData = want.Data, nil
		changed = true
	}
	return changed
}

func ownedBy(sec *corev1.Secret, uid types.UID) bool {
	for _, r := range sec.OwnerReferences {
		if r.Controller != nil && *r.Controller && r.Kind == "FalCredential" && r.UID == uid {
			return true
		}
	}
	return false
}
