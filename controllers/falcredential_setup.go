package controllers

import (
	"context"
	"fmt"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/internal/rotation"
)

// SetupWithManager registers the reconciler with mgr.
//
// What is cached, and why (memory on big clusters):
//   - FalCredentials: fully, in the manager's cache.
//   - Secrets: metadata only (PartialObjectMetadata, about 1 KiB each, never
//     the data), cluster-wide, just to learn that a referenced or managed
//     Secret changed. Contents are read with uncached GETs (APIReader) when a
//     credential is reconciled, so the manager never holds every Secret of the
//     cluster in memory, and rotation decisions never act on a stale copy.
//   - Pods: metadata only, and only pods labelled falguard.dev/credential, in a
//     cache of this controller's own; enough to count status.pods. Pod status
//     churn is filtered out: only creation, deletion and a change of that label
//     wake a credential up.
func (r *FalCredentialReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		r.Client = mgr.GetClient()
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder("falguard-controller")
	}
	if r.Clock == nil {
		r.Clock = rotation.RealClock{}
	}
	if r.Fal == nil {
		return fmt.Errorf("FalCredentialReconciler needs a fal client")
	}
	if r.VerifyRate <= 0 {
		r.VerifyRate = DefaultVerifyRate
	}
	if r.VerifyBurst <= 0 {
		r.VerifyBurst = DefaultVerifyBurst
	}
	if r.MaxConcurrentReconciles <= 0 {
		r.MaxConcurrentReconciles = DefaultMaxConcurrent
	}
	if r.BackoffBase <= 0 {
		r.BackoffBase = DefaultBackoffBase
	}
	if r.BackoffMax <= 0 {
		r.BackoffMax = DefaultBackoffMax
	}
	r.limiter = rate.NewLimiter(rate.Limit(r.VerifyRate), r.VerifyBurst)
	r.backoffs = map[types.NamespacedName]*backoffState{}
	r.verified = map[types.NamespacedName]verifyRecord{}

	ctx := context.Background()
	if err := mgr.GetFieldIndexer().IndexField(ctx, &falguardv1alpha1.FalCredential{}, indexSecretRefs, secretRefs); err != nil {
		return fmt.Errorf("indexing FalCredentials by Secret: %w", err)
	}

	hasLabel, err := labels.NewRequirement(falguardv1alpha1.LabelCredential, selection.Exists, nil)
	if err != nil {
		return err
	}
	podCache, err := cache.New(mgr.GetConfig(), cache.Options{
		HTTPClient:           mgr.GetHTTPClient(),
		Scheme:               mgr.GetScheme(),
		Mapper:               mgr.GetRESTMapper(),
		DefaultLabelSelector: labels.NewSelector().Add(*hasLabel),
	})
	if err != nil {
		return fmt.Errorf("creating the pod cache: %w", err)
	}
	if err := mgr.Add(podCache); err != nil {
		return fmt.Errorf("adding the pod cache: %w", err)
	}
	r.podReader = podCache

	skip := r.SkipNameValidation
	return ctrl.NewControllerManagedBy(mgr).
		Named("falcredential").
		For(&falguardv1alpha1.FalCredential{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{},
			predicate.LabelChangedPredicate{}, deletionPredicate{}))).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.secretToCredentials)).
		WatchesRawSource(source.Kind(podCache, podMeta(), podHandler{}, podPredicate())).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentReconciles, SkipNameValidation: &skip}).
		Complete(r)
}

func secretRefs(o client.Object) []string {
	fc := o.(*falguardv1alpha1.FalCredential)
	var out []string
	if fc.Spec.SecretRef != nil {
		out = append(out, fc.Spec.SecretRef.Name)
	}
	if fc.Spec.Rotation != nil && fc.Spec.Rotation.AdminSecretRef.Name != "" {
		out = append(out, fc.Spec.Rotation.AdminSecretRef.Name)
	}
	return out
}

// secretToCredentials maps a Secret event to the FalCredentials that own it
// (managed Secret: restore it) or reference it (source or admin key).
func (r *FalCredentialReconciler) secretToCredentials(ctx context.Context, o client.Object) []reconcile.Request {
	var reqs []reconcile.Request
	for _, ref := range o.GetOwnerReferences() {
		if ref.Controller != nil && *ref.Controller && ref.Kind == "FalCredential" && ref.APIVersion == falguardv1alpha1.GroupVersion.String() {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: ref.Name}})
		}
	}
	list := &falguardv1alpha1.FalCredentialList{}
	if err := r.Client.List(ctx, list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexSecretRefs: o.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing FalCredentials for a Secret", "secret", o.GetName())
		return reqs
	}
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}

func podMeta() *metav1.PartialObjectMetadata {
	p := &metav1.PartialObjectMetadata{}
	p.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Pod"))
	return p
}

// podPredicate lets through what changes a count: create, delete, the
// credential label changing, and the start of a deletion.
func podPredicate() predicate.TypedPredicate[*metav1.PartialObjectMetadata] {
	return predicate.TypedFuncs[*metav1.PartialObjectMetadata]{
		CreateFunc: func(event.TypedCreateEvent[*metav1.PartialObjectMetadata]) bool { return true },
		DeleteFunc: func(event.TypedDeleteEvent[*metav1.PartialObjectMetadata]) bool { return true },
		UpdateFunc: func(e event.TypedUpdateEvent[*metav1.PartialObjectMetadata]) bool {
			return e.ObjectOld.Labels[falguardv1alpha1.LabelCredential] != e.ObjectNew.Labels[falguardv1alpha1.LabelCredential] ||
				e.ObjectOld.DeletionTimestamp.IsZero() != e.ObjectNew.DeletionTimestamp.IsZero()
		},
		GenericFunc: func(event.TypedGenericEvent[*metav1.PartialObjectMetadata]) bool { return false },
	}
}

// podHandler enqueues the credential named by a pod's label (both the old and
// the new one when the label changed).
type podHandler struct{}

type podQueue = workqueue.TypedRateLimitingInterface[reconcile.Request]

func enqueuePod(q podQueue, p *metav1.PartialObjectMetadata) {
	if p == nil {
		return
	}
	if name := p.Labels[falguardv1alpha1.LabelCredential]; name != "" {
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: name}})
	}
}

func (podHandler) Create(_ context.Context, e event.TypedCreateEvent[*metav1.PartialObjectMetadata], q podQueue) {
	enqueuePod(q, e.Object)
}
func (podHandler) Update(_ context.Context, e event.TypedUpdateEvent[*metav1.PartialObjectMetadata], q podQueue) {
	enqueuePod(q, e.ObjectOld)
	enqueuePod(q, e.ObjectNew)
}
func (podHandler) Delete(_ context.Context, e event.TypedDeleteEvent[*metav1.PartialObjectMetadata], q podQueue) {
	enqueuePod(q, e.Object)
}
func (podHandler) Generic(_ context.Context, e event.TypedGenericEvent[*metav1.PartialObjectMetadata], q podQueue) {
	enqueuePod(q, e.Object)
}

// deletionPredicate wakes the reconciler when deletion starts (finalizer work).
type deletionPredicate struct {
	predicate.Funcs
}

func (deletionPredicate) Update(e event.UpdateEvent) bool {
	return e.ObjectOld.GetDeletionTimestamp().IsZero() != e.ObjectNew.GetDeletionTimestamp().IsZero()
}
