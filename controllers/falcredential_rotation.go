package controllers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/internal/rotation"
)

// Crash safety of a rotation, step by step (each step is one durable write):
//
//  1. status.pendingKeyAlias = alias          (before fal is asked for a key)
//  2. POST /v1/keys {alias}                    (fal: new key alive)
//  3. managed Secret: new key + record         (the only copy of its secret;
//     key-id, previous-key-id, revoke-at)      the old key becomes "previous")
//  4. status mirrors the record, pending = ""
//  5. after gracePeriod: DELETE previous       (idempotent)
//  6. record cleared in Secret and status
//
// A crash after 1 or 2 leaves pendingKeyAlias set: the next reconcile lists
// fal's keys and deletes any key with that alias that is not the one in the
// managed Secret (read fresh from the API server), then clears the alias.
// A crash after 3 is found the same way (the alias matches the published key,
// which is kept) and status is rebuilt from the Secret. A crash around 5 just
// repeats the delete. Only ids recorded as operator-created (key-source
// Operator, previous-key-id) or carrying our pending alias are ever deleted.

// syncRotation recovers an interrupted rotation, revokes the previous key when
// its grace period ends and rotates when due.
func (r *FalCredentialReconciler) syncRotation(ctx context.Context, rn *run) error {
	fc, rot := rn.fc, rn.fc.Spec.Rotation
	admin, _, adminErr := r.readKey(ctx, fc.Namespace, rot.AdminSecretRef)
	state := rotation.State{
		HaveKey: rn.key != "", PublishedAt: rn.d.PublishedAt, Every: rot.Every.Duration,
		RotateNow: fc.Annotations[falguardv1alpha1.AnnotationRotateNow], LastRotateNow: rn.d.LastRotateNow,
	}
	if rn.source == falguardv1alpha1.KeySourceUser && rn.d.KeyID != rn.keyID {
		// a user key not yet published: its schedule starts when it is
		state.PublishedAt = rn.now
	}
	due, why := rotation.Due(rn.now, state)
	needAdmin := fc.Status.PendingKeyAlias != "" || due || rn.d.PreviousKeyID != ""
	if adminErr != nil {
		if needAdmin {
			r.setCond(fc, falguardv1alpha1.ConditionRotation, metav1.ConditionFalse, ReasonAdminKeyMissing, "cannot use the admin key: "+adminErr.Error())
			if rn.key == "" {
				rn.noKeyWhy, rn.noKeyMsg = ReasonAdminKeyMissing, "no key to publish and rotation cannot create one: "+adminErr.Error()
			}
		} else {
			r.setCond(fc, falguardv1alpha1.ConditionRotation, metav1.ConditionFalse, ReasonAdminKeyMissing, "the next rotation will fail: "+adminErr.Error())
		}
		return nil
	}
	if !r.falAllowed(rn.req, rn.now) {
		return nil // backing off after a fal error; Reconcile requeues at the backoff time
	}
	if pending := fc.Status.PendingKeyAlias; pending != "" {
		if err := r.recoverPending(ctx, rn, admin, pending); err != nil {
			return err
		}
	}
	if rn.d.PreviousKeyID != "" && rotation.RevokeDue(rn.now, rn.d.PreviousRevokeAt) {
		if err := r.revokePrevious(ctx, rn, admin); err != nil {
			return err
		}
	}
	if due {
		if err := r.rotate(ctx, rn, admin, why); err != nil {
			return err
		}
		return nil
	}
	next := rotation.NextRotation(state)
	msg := "rotation scheduled"
	if !next.IsZero() {
		msg = "next rotation at " + fmtTime(next)
	}
	if rn.d.PreviousKeyID != "" {
		msg += fmt.Sprintf("; previous key %s will be deleted at %s", rn.d.PreviousKeyID, fmtTime(rn.d.PreviousRevokeAt))
	}
	r.setCond(fc, falguardv1alpha1.ConditionRotation, metav1.ConditionTrue, ReasonScheduled, msg)
	return nil
}

// recoverPending finishes an interrupted rotation: keys at fal carrying the
// pending alias that are not the published key are orphans (their secret was
// never stored) and are deleted.
func (r *FalCredentialReconciler) recoverPending(ctx context.Context, rn *run, admin, alias string) error {
	fc := rn.fc
	keys, err := r.Fal.ListKeys(ctx, admin)
	if err != nil {
		return r.rotationFalError(rn, ReasonRotationFailed, "listing keys at fal to clean up an interrupted rotation", err)
	}
	for _, k := range keys {
		if k.Alias != alias || k.KeyID == rn.d.KeyID || k.KeyID == rn.d.PreviousKeyID {
			continue
		}
		err := r.Fal.DeleteKey(ctx, admin, k.KeyID)
		revocationsTotal.WithLabelValues(result(err)).Inc()
		if err != nil {
			return r.rotationFalError(rn, ReasonRevocationFailed, fmt.Sprintf("deleting orphan key %s left by an interrupted rotation", k.KeyID), err)
		}
		r.event(fc, corev1.EventTypeNormal, ReasonOrphanKeyDeleted, "Revoke", "deleted key %s created by an interrupted rotation whose secret was never stored", k.KeyID)
	}
	fc.Status.PendingKeyAlias = ""
	return r.writeStatus(ctx, rn)
}

// revokePrevious deletes the previous operator-created key at fal.
func (r *FalCredentialReconciler) revokePrevious(ctx context.Context, rn *run, admin string) error {
	prev := rn.d.PreviousKeyID
	if prev != rn.keyID && prev != rn.d.KeyID { // never the key being published
		if err := r.hook(ctx, rn, StepBeforeRevoke); err != nil {
			return err
		}
		err := r.Fal.DeleteKey(ctx, admin, prev)
		revocationsTotal.WithLabelValues(result(err)).Inc()
		if err != nil {
			return r.rotationFalError(rn, ReasonRevocationFailed, fmt.Sprintf("deleting previous key %s", prev), err)
		}
		if err := r.hook(ctx, rn, StepAfterRevoke); err != nil {
			return err
		}
		r.event(rn.fc, corev1.EventTypeNormal, ReasonKeyRevoked, "Revoke", "deleted previous key %s at fal after its grace period", prev)
	}
	// The record is cleared by the publish that follows in this reconcile; a
	// crash before it only repeats the (idempotent) delete.
	rn.d.PreviousKeyID, rn.d.PreviousRevokeAt = "", time.Time{}
	return nil
}

// rotate creates a key at fal and publishes it.
func (r *FalCredentialReconciler) rotate(ctx context.Context, rn *run, admin, why string) error {
	fc, rot := rn.fc, rn.fc.Spec.Rotation
	if rn.d.PreviousKeyID != "" {
		// Rotating again inside a grace period: the older key goes now, so at
		// most two keys are ever alive and every one stays on record.
		if err := r.revokePrevious(ctx, rn, admin); err != nil {
			return err
		}
		if rn.key != "" {
			if err := r.publish(ctx, rn, rn.d); err != nil {
				return err
			}
		}
	}
	alias := fmt.Sprintf("falguard-%s-%s-%s", fc.Namespace, fc.Name, randHex(4))
	fc.Status.PendingKeyAlias = alias
	if err := r.writeStatus(ctx, rn); err != nil {
		return err
	}
	if err := r.hook(ctx, rn, StepBeforeCreate); err != nil {
		return err
	}
	created, err := r.Fal.CreateKey(ctx, admin, alias)
	if err != nil {
		rotationsTotal.WithLabelValues("failure").Inc()
		if rn.key == "" {
			rn.noKeyWhy, rn.noKeyMsg = ReasonRotationFailed, "creating the first key at fal failed: "+err.Error()
		}
		return r.rotationFalError(rn, ReasonRotationFailed, "creating a key at fal", err)
	}
	if err := r.hook(ctx, rn, StepAfterCreate); err != nil {
		return err
	}
	old, oldSource := rn.d.KeyID, rn.d.Source
	nd := durable{KeyID: created.KeyID, Source: falguardv1alpha1.KeySourceOperator, PublishedAt: rn.now, LastRotateNow: rn.d.LastRotateNow}
	if v := fc.Annotations[falguardv1alpha1.AnnotationRotateNow]; v != "" {
		nd.LastRotateNow = v
	}
	if oldSource == falguardv1alpha1.KeySourceOperator && old != "" && old != created.KeyID {
		nd.PreviousKeyID, nd.PreviousRevokeAt = old, rotation.RevokeAt(rn.now, rot.GracePeriod.Duration)
	}
	rn.setKey(created.Key, created.KeyID, falguardv1alpha1.KeySourceOperator)
	if err := r.publish(ctx, rn, nd); err != nil {
		rotationsTotal.WithLabelValues("failure").Inc()
		return err // the new key is an orphan now; pendingKeyAlias gets it deleted
	}
	if err := r.hook(ctx, rn, StepAfterPublish); err != nil {
		return err
	}
	fc.Status.PendingKeyAlias = ""
	fc.Status.KeyID, fc.Status.KeySource = created.KeyID, falguardv1alpha1.KeySourceOperator
	fc.Status.PreviousKeyID, fc.Status.PreviousKeyRevokeAt = nd.PreviousKeyID, metaTime(nd.PreviousRevokeAt)
	fc.Status.LastRotationTime, fc.Status.LastRotateNow = metaTime(nd.PublishedAt), nd.LastRotateNow
	if err := r.writeStatus(ctx, rn); err != nil {
		return err
	}
	r.falOK(rn.req)
	rotationsTotal.WithLabelValues("success").Inc()
	msg := fmt.Sprintf("rotated (%s): key %s published", why, created.KeyID)
	switch {
	case nd.PreviousKeyID != "":
		msg += fmt.Sprintf("; previous key %s will be deleted at fal at %s", nd.PreviousKeyID, fmtTime(nd.PreviousRevokeAt))
	case oldSource == falguardv1alpha1.KeySourceUser && old != "":
		msg += fmt.Sprintf("; user-provided key %s is no longer used and was left alive at fal", old)
	}
	r.event(fc, corev1.EventTypeNormal, ReasonKeyRotated, "Rotate", "%s", msg)
	r.setCond(fc, falguardv1alpha1.ConditionRotation, metav1.ConditionTrue, ReasonRotated, msg+"; next rotation at "+fmtTime(rn.now.Add(rot.Every.Duration)))
	return nil
}

// rotationFalError records a failed fal call in the Rotation condition and
// schedules a retry with backoff.
func (r *FalCredentialReconciler) rotationFalError(rn *run, reason, what string, err error) error {
	wait := r.falFail(rn.req, rn.now, err)
	msg := fmt.Sprintf("%s: %v; retrying in %s", what, err, wait.Round(time.Second))
	if prev := meta.FindStatusCondition(rn.fc.Status.Conditions, falguardv1alpha1.ConditionRotation); prev == nil || prev.Reason != reason || prev.Status != metav1.ConditionFalse {
		r.event(rn.fc, corev1.EventTypeWarning, reason, "Rotate", "%s: %v", what, err)
	}
	r.setCond(rn.fc, falguardv1alpha1.ConditionRotation, metav1.ConditionFalse, reason, msg)
	return &falError{err}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// finalize deletes the operator-created keys of a FalCredential being deleted
// (unless annotated falguard.dev/skip-revoke-on-delete=true), then lets it go.
func (r *FalCredentialReconciler) finalize(ctx context.Context, fc *falguardv1alpha1.FalCredential) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(fc, falguardv1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	req := client.ObjectKeyFromObject(fc)
	rn := &run{fc: fc, req: req, now: r.Clock.Now(), written: *fc.Status.DeepCopy()}
	if err := r.readManagedSecret(ctx, rn); err != nil {
		return ctrl.Result{}, err
	}
	if rn.sec != nil && !ownedBy(rn.sec, fc.UID) {
		rn.sec = nil // not ours: neither read its record nor delete it
	}
	d := durableFrom(rn.sec, &fc.Status)
	var ids []string
	if d.Source == falguardv1alpha1.KeySourceOperator && d.KeyID != "" {
		ids = append(ids, d.KeyID)
	}
	if d.PreviousKeyID != "" {
		ids = append(ids, d.PreviousKeyID)
	}
	if fc.Status.KeySource == falguardv1alpha1.KeySourceOperator && fc.Status.KeyID != "" && fc.Status.KeyID != d.KeyID {
		ids = append(ids, fc.Status.KeyID)
	}
	pending := fc.Status.PendingKeyAlias
	skip := fc.Annotations[falguardv1alpha1.AnnotationSkipRevokeOnDelete] == "true"

	if !skip && (len(ids) > 0 || pending != "") {
		fail := func(reason, msg string) (ctrl.Result, error) {
			r.markAsFailed(fc, reason, msg)
			if err := r.finishDeleteStatus(ctx, rn); err != nil {
				return conflictOr(err)
			}
			return r.result(rn), nil
		}
		if fc.Spec.Rotation == nil {
			return fail(ReasonAdminKeyMissing, fmt.Sprintf("cannot delete operator-created keys %v at fal: spec.rotation (and its admin key) was removed; restore it, or annotate %s=true to leave the keys alive", ids, falguardv1alpha1.AnnotationSkipRevokeOnDelete))
		}
		admin, _, err := r.readKey(ctx, fc.Namespace, fc.Spec.Rotation.AdminSecretRef)
		if err != nil {
			r.falFail(req, rn.now, nil)
			return fail(ReasonAdminKeyMissing, fmt.Sprintf("cannot delete operator-created keys %v at fal: %v; fix the admin Secret, or annotate %s=true to leave the keys alive", ids, err, falguardv1alpha1.AnnotationSkipRevokeOnDelete))
		}
		if !r.falAllowed(req, rn.now) {
			return r.result(rn), nil
		}
		// Take the key away from sidecars first, so no managed Secret ever
		// holds a deleted key; garbage collection would remove it anyway.
		if rn.sec != nil {
			if err := r.Client.Delete(ctx, rn.sec, client.Preconditions{UID: &rn.sec.UID}); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("deleting managed Secret: %w", err)
			}
		}
		if pending != "" {
			keys, err := r.Fal.ListKeys(ctx, admin)
			if err != nil {
				r.falFail(req, rn.now, err)
				return fail(ReasonRevocationFailed, fmt.Sprintf("listing keys at fal to find an interrupted rotation's key: %v", err))
			}
			for _, k := range keys {
				if k.Alias == pending {
					ids = append(ids, k.KeyID)
				}
			}
		}
		for _, id := range ids {
			err := r.Fal.DeleteKey(ctx, admin, id)
			revocationsTotal.WithLabelValues(result(err)).Inc()
			if err != nil {
				r.falFail(req, rn.now, err)
				return fail(ReasonRevocationFailed, fmt.Sprintf("deleting operator-created key %s at fal: %v; retrying (annotate %s=true to give up)", id, err, falguardv1alpha1.AnnotationSkipRevokeOnDelete))
			}
			r.event(fc, corev1.EventTypeNormal, ReasonKeyRevoked, "Revoke", "deleted operator-created key %s at fal because the FalCredential is being deleted", id)
		}
	} else if skip && len(ids) > 0 {
		r.event(fc, corev1.EventTypeNormal, ReasonRevokeSkipped, "Revoke", "left operator-created keys %v alive at fal (%s=true)", ids, falguardv1alpha1.AnnotationSkipRevokeOnDelete)
	}
	controllerutil.RemoveFinalizer(fc, falguardv1alpha1.Finalizer)
	if err := r.Client.Update(ctx, fc); err != nil && !apierrors.IsNotFound(err) {
		return conflictOr(fmt.Errorf("removing finalizer: %w", err))
	}
	forgetCredentialMetrics(fc.Namespace, fc.Name)
	r.forget(req)
	return ctrl.Result{}, nil
}

func (r *FalCredentialReconciler) finishDeleteStatus(ctx context.Context, rn *run) error {
	rn.fc.Status.ObservedGeneration = rn.fc.Generation
	err := r.writeStatus(ctx, rn)
	if apierrors.IsNotFound(err) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
