package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Annotations and labels that are part of the API.
const (
	// AnnotationRotateNow forces a rotation whenever its value changes.
	AnnotationRotateNow = "falguard.dev/rotate-now"
	// AnnotationSkipRevokeOnDelete, set to "true", leaves operator-created keys
	// alive at fal when the FalCredential is deleted.
	AnnotationSkipRevokeOnDelete = "falguard.dev/skip-revoke-on-delete"
	// AnnotationInject on a pod names the FalCredential whose sidecar it wants.
	AnnotationInject = "falguard.dev/inject"
	// LabelCredential is set on injected pods; status.pods counts them.
	LabelCredential = "falguard.dev/credential"
	// Finalizer lets the controller revoke operator-created keys before deletion.
	Finalizer = "falguard.dev/revoke-keys"
)

// Condition types.
const (
	ConditionReady       = "Ready"
	ConditionKeyVerified = "KeyVerified"
	ConditionRotation    = "Rotation"
)

// SecretKeySelector names one key of a Secret in the FalCredential's namespace.
type SecretKeySelector struct {
	// Name of the Secret, in the FalCredential's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`

	// Key within the Secret's data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	// +kubebuilder:default=FAL_KEY
	// +optional
	Key string `json:"key,omitempty"`
}

// TokenSpec shapes the short-lived realtime JWTs the sidecar asks fal for.
type TokenSpec struct {
	// TTL is the token_expiration asked of fal, from 10s to 1h.
	// +kubebuilder:default="120s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s') && duration(self) <= duration('1h')",message="token.ttl must be between 10s and 1h"
	// +optional
	TTL metav1.Duration `json:"ttl,omitzero"`
}

// ProxySpec limits what the sidecar's proxy lets the app send to fal.
// +kubebuilder:validation:XValidation:rule="!has(self.requestsPerSecond) || self.requestsPerSecond == 0 || !has(self.burst) || self.burst >= self.requestsPerSecond",message="proxy.burst must be at least proxy.requestsPerSecond"
type ProxySpec struct {
	// MaxRequestBytes caps a request body sent through the proxy (1Ki to 1Gi).
	// +kubebuilder:default="32Mi"
	// +kubebuilder:validation:XValidation:rule="isQuantity(string(self)) && quantity(string(self)).compareTo(quantity('1Ki')) >= 0 && quantity(string(self)).compareTo(quantity('1Gi')) <= 0",message="proxy.maxRequestBytes must be a quantity between 1Ki and 1Gi"
	// +optional
	MaxRequestBytes *resource.Quantity `json:"maxRequestBytes,omitempty"`

	// RequestsPerSecond sent to fal per pod; 0 or unset turns the limit off.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100000
	// +optional
	RequestsPerSecond int32 `json:"requestsPerSecond,omitempty"`

	// Burst is the token-bucket size; defaults to twice requestsPerSecond.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	// +optional
	Burst int32 `json:"burst,omitempty"`

	// AllowedOrigins are the browser origins (scheme://host[:port]) that may call
	// the proxy cross-origin. Empty means no CORS headers at all.
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^https?://[a-zA-Z0-9.-]+(:[0-9]{1,5})?$`
	// +optional
	AllowedOrigins []string `json:"allowedOrigins,omitempty"`
}

// RotationSpec hands the key's lifecycle to the operator.
// +kubebuilder:validation:XValidation:rule="duration(self.gracePeriod) < duration(self.every)",message="rotation.gracePeriod must be shorter than rotation.every, or more than two keys would be alive at once"
type RotationSpec struct {
	// AdminSecretRef names an ADMIN-scope fal key used to create and delete keys.
	AdminSecretRef SecretKeySelector `json:"adminSecretRef"`

	// Every is how often a new key is created (at least 1m).
	// +kubebuilder:default="720h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m')",message="rotation.every must be at least 1m"
	// +optional
	Every metav1.Duration `json:"every,omitzero"`

	// GracePeriod keeps the previous key valid after the new one is published,
	// so in-flight work and sidecars still reloading finish with it.
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s')",message="rotation.gracePeriod must not be negative"
	// +optional
	GracePeriod metav1.Duration `json:"gracePeriod,omitzero"`
}

// FalCredentialSpec is the desired state of a FalCredential.
// +kubebuilder:validation:XValidation:rule="has(self.secretRef) || has(self.rotation)",message="spec.secretRef is required unless spec.rotation creates the first key"
type FalCredentialSpec struct {
	// SecretRef names the Secret key holding the fal key ("key_id:key_secret").
	// Optional only when rotation is set, in which case the operator creates it.
	// +optional
	SecretRef *SecretKeySelector `json:"secretRef,omitempty"`

	// AllowedApps are owner/alias globs (e.g. "fal-ai/flux/*") the key may be used for.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	// +kubebuilder:validation:items:MaxLength=255
	// +kubebuilder:validation:items:Pattern=`^[a-zA-Z0-9][a-zA-Z0-9._-]*/[a-zA-Z0-9*?._-]+(/[a-zA-Z0-9*?._-]+)*$`
	AllowedApps []string `json:"allowedApps"`

	// Token shapes the realtime JWTs.
	// +kubebuilder:default={}
	// +optional
	Token TokenSpec `json:"token,omitzero"`

	// Proxy limits the sidecar's proxy.
	// +kubebuilder:default={}
	// +optional
	Proxy ProxySpec `json:"proxy,omitzero"`

	// Rotation, when set, lets the operator create, rotate and revoke keys.
	// +optional
	Rotation *RotationSpec `json:"rotation,omitempty"`
}

// KeySource says who created the key in use.
// +kubebuilder:validation:Enum=User;Operator
type KeySource string

const (
	// KeySourceUser is a key from spec.secretRef; never deleted by the operator.
	KeySourceUser KeySource = "User"
	// KeySourceOperator is a key the operator created through fal's Platform API.
	KeySourceOperator KeySource = "Operator"
)

// FalCredentialStatus is the observed state of a FalCredential.
type FalCredentialStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, KeyVerified, Rotation.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// KeyID is the public half of the key in use; never the secret.
	// +optional
	KeyID string `json:"keyID,omitempty"`

	// KeySource says whether the key in use came from the user or the operator.
	// +optional
	KeySource KeySource `json:"keySource,omitempty"`

	// SecretName is the managed Secret the sidecars mount.
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// LastRotationTime is when the current key was published by a rotation.
	// +optional
	LastRotationTime *metav1.Time `json:"lastRotationTime,omitempty"`

	// NextRotationTime is when the next scheduled rotation is due.
	// +optional
	NextRotationTime *metav1.Time `json:"nextRotationTime,omitempty"`

	// PreviousKeyID is the operator-created key replaced by the last rotation,
	// still alive at fal until PreviousKeyRevokeAt.
	// +optional
	PreviousKeyID string `json:"previousKeyID,omitempty"`

	// PreviousKeyRevokeAt is when PreviousKeyID will be deleted at fal.
	// +optional
	PreviousKeyRevokeAt *metav1.Time `json:"previousKeyRevokeAt,omitempty"`

	// PendingKeyAlias is recorded before a key is created at fal, so that after a
	// crash the operator finds and deletes a key whose secret it never saw.
	// +optional
	PendingKeyAlias string `json:"pendingKeyAlias,omitempty"`

	// LastRotateNow is the last falguard.dev/rotate-now value acted on.
	// +optional
	LastRotateNow string `json:"lastRotateNow,omitempty"`

	// VerifiedKeyHash identifies (by hash) the key last verified against fal.
	// +optional
	VerifiedKeyHash string `json:"verifiedKeyHash,omitempty"`

	// Pods is the number of pods currently injected with this credential.
	// +optional
	Pods int32 `json:"pods"`
}

// FalCredential holds one fal.ai key for the pods of a namespace.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=falcred,categories=falguard
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Key ID",type=string,JSONPath=`.status.keyID`
// +kubebuilder:printcolumn:name="Apps",type=string,JSONPath=`.spec.allowedApps`
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.pods`
// +kubebuilder:printcolumn:name="Last Rotation",type=date,JSONPath=`.status.lastRotationTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name must be at most 63 characters: it becomes the falguard.dev/credential label value on pods"
type FalCredential struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   FalCredentialSpec   `json:"spec,omitempty"`
	Status FalCredentialStatus `json:"status,omitempty"`
}

// FalCredentialList is a list of FalCredentials.
// +kubebuilder:object:root=true
type FalCredentialList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FalCredential `json:"items"`
}

// ManagedSecretName is the Secret the controller writes and sidecars mount.
func ManagedSecretName(credential string) string { return "falguard-" + credential }
