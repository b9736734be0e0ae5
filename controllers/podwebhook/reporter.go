package podwebhook

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/internal/inject"
)

// ReasonSidecarMissing is the Warning event on a pod that asked for the
// sidecar and was admitted without it.
const ReasonSidecarMissing = "SidecarMissing"

// MissingSidecarReporter finds pods that carry falguard.dev/inject but not
// falguard.dev/status: injected — admitted while the webhook was down under
// failurePolicy Ignore, or created before it was installed. It raises one
// Warning event per pod and keeps falguard_pods_missing_sidecar current.
// It watches pod metadata only, to keep the manager's memory small.
type MissingSidecarReporter struct {
	Client   client.Reader
	Recorder events.EventRecorder

	mu      sync.Mutex
	missing map[types.NamespacedName]types.UID
}

// SetupWithManager registers the reporter (it runs on the leader only).
func (r *MissingSidecarReporter) SetupWithManager(mgr ctrl.Manager) error {
	asked := predicate.NewPredicateFuncs(func(o client.Object) bool {
		_, ok := o.GetAnnotations()[falguardv1alpha1.AnnotationInject]
		return ok
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("falguard-missing-sidecar").
		For(&corev1.Pod{}, builder.OnlyMetadata, builder.WithPredicates(asked)).
		Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *MissingSidecarReporter) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pod := &metav1.PartialObjectMetadata{}
	pod.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Pod"))
	if err := r.Client.Get(ctx, req.NamespacedName, pod); apierrors.IsNotFound(err) {
		r.set(req.NamespacedName, "", false)
		return ctrl.Result{}, nil
	} else if err != nil {
		return ctrl.Result{}, fmt.Errorf("get pod %s: %w", req.NamespacedName, err)
	}
	name, asked := pod.Annotations[falguardv1alpha1.AnnotationInject]
	missing := asked && pod.Annotations[inject.AnnotationStatus] != inject.StatusInjected && pod.DeletionTimestamp == nil
	if r.set(req.NamespacedName, pod.UID, missing) && r.Recorder != nil {
		r.Recorder.Eventf(pod, nil, corev1.EventTypeWarning, ReasonSidecarMissing, "CheckInjection",
			"pod asks for FalCredential %q (annotation %s) but was created without the falguard sidecar, so it cannot reach fal; "+
				"the webhook was unreachable or skipped it (failurePolicy Ignore, or a namespace it excludes): delete the pod so its controller recreates it",
			name, falguardv1alpha1.AnnotationInject)
	}
	return ctrl.Result{}, nil
}

// set records whether a pod lacks its sidecar; true when it is newly missing.
func (r *MissingSidecarReporter) set(key types.NamespacedName, uid types.UID, missing bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.missing == nil {
		r.missing = map[types.NamespacedName]types.UID{}
	}
	prev, had := r.missing[key]
	if missing {
		r.missing[key] = uid
	} else {
		delete(r.missing, key)
	}
	podsMissingSidecar.Set(float64(len(r.missing)))
	return missing && (!had || prev != uid)
}

// Missing returns how many pods currently lack their sidecar.
func (r *MissingSidecarReporter) Missing() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.missing)
}
