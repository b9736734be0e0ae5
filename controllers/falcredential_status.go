package controllers

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
)

// Condition reasons (also used as event reasons). Each names what a person
// should look at.
const (
	// Ready
	ReasonPublished           = "Published"           // True: key in the managed Secret and accepted by fal
	ReasonNoKey               = "NoKey"               // no key yet (rotation will create one)
	ReasonSecretNotFound      = "SecretNotFound"      // spec.secretRef's Secret is missing
	ReasonKeyMissing          = "KeyMissing"          // the Secret lacks the key (or it is empty)
	ReasonKeyMalformed        = "KeyMalformed"        // not "key_id:key_secret"
	ReasonSecretConflict      = "SecretConflict"      // falguard-<name> exists and is not ours
	ReasonInvalidSpec         = "InvalidSpec"         // policy could not be built from the spec
	ReasonKeyRejected         = "KeyRejected"         // fal refused the key (status in the message)
	ReasonFalUnreachable      = "FalUnreachable"      // no answer / 429 / 5xx from fal
	ReasonVerificationPending = "VerificationPending" // key published, check with fal queued
	ReasonVerificationFailed  = "VerificationFailed"  // fal answered something unexpected (e.g. 400)
	ReasonRotationFailed      = "RotationFailed"      // creating a key at fal failed
	ReasonAdminKeyMissing     = "AdminKeyMissing"     // rotation.adminSecretRef unusable
	ReasonRevocationFailed    = "RevocationFailed"    // deleting an operator-created key failed
	ReasonDeleting            = "Deleting"            // finalizer at work

	// KeyVerified
	ReasonKeyAccepted = "KeyAccepted"

	// Rotation
	ReasonScheduled = "Scheduled" // True: next rotation time in the message
	ReasonRotated   = "Rotated"   // True: a rotation just completed

	// Events only
	ReasonKeyPublished     = "KeyPublished"
	ReasonKeyRotated       = "KeyRotated"
	ReasonKeyRevoked       = "KeyRevoked"
	ReasonOrphanKeyDeleted = "OrphanKeyDeleted"
	ReasonKeyLost          = "OperatorKeyLost"
	ReasonRevokeSkipped    = "RevokeSkipped"
	ReasonKeyAbandoned     = "OperatorKeyAbandoned"
)

// setCond sets a condition with the object's generation; true when it changed.
func (r *FalCredentialReconciler) setCond(fc *falguardv1alpha1.FalCredential, typ string, status metav1.ConditionStatus, reason, msg string) bool {
	if len(msg) > 1024 {
		msg = msg[:1021] + "..."
	}
	return meta.SetStatusCondition(&fc.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: fc.Generation,
	})
}

// markAsDone sets Ready True, emits the readiness metric and, when Ready
// flips, an event: condition, event and metric in one call.
func (r *FalCredentialReconciler) markAsDone(fc *falguardv1alpha1.FalCredential, msg string) {
	credentialReady.WithLabelValues(fc.Namespace, fc.Name).Set(1)
	was := meta.IsStatusConditionTrue(fc.Status.Conditions, falguardv1alpha1.ConditionReady)
	r.setCond(fc, falguardv1alpha1.ConditionReady, metav1.ConditionTrue, ReasonPublished, msg)
	if !was {
		r.event(fc, corev1.EventTypeNormal, "Ready", "Reconcile", "%s", msg)
	}
}

// markAsFailed sets Ready False with reason, the readiness metric to 0 and,
// when the reason changed, a Warning event (not on every retry).
func (r *FalCredentialReconciler) markAsFailed(fc *falguardv1alpha1.FalCredential, reason, msg string) {
	credentialReady.WithLabelValues(fc.Namespace, fc.Name).Set(0)
	prev := meta.FindStatusCondition(fc.Status.Conditions, falguardv1alpha1.ConditionReady)
	r.setCond(fc, falguardv1alpha1.ConditionReady, metav1.ConditionFalse, reason, msg)
	transient := reason == ReasonVerificationPending || reason == ReasonNoKey // normal steps, not warnings
	if !transient && (prev == nil || prev.Status != metav1.ConditionFalse || prev.Reason != reason) {
		r.event(fc, corev1.EventTypeWarning, reason, "Reconcile", "%s", msg)
	}
}

// event records a Kubernetes event on fc. Callers never pass key material.
func (r *FalCredentialReconciler) event(fc *falguardv1alpha1.FalCredential, typ, reason, action, format string, args ...any) {
	if r.Recorder == nil {
		return
	}
	note := fmt.Sprintf(format, args...)
	if len(note) > 1024 {
		note = note[:1021] + "..."
	}
	r.Recorder.Eventf(fc, nil, typ, reason, action, "%s", note)
}
