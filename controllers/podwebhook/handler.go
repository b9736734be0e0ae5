// Package podwebhook is the manager's pod-injection webhook: the admission
// handler around internal/inject, and the reporter of annotated pods that
// were created without the sidecar.
package podwebhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/internal/inject"
)

// Path is where the webhook is served; config/webhook points at it.
const Path = "/mutate-v1-pod"

// +kubebuilder:rbac:groups=falguard.dev,resources=falcredentials,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups="",namespace=falguard-system,resources=secrets,verbs=get;list;watch;create;update;patch

// Handler admits pods that carry falguard.dev/inject.
type Handler struct {
	// Client reads FalCredentials (usually the manager's cached client).
	Client client.Reader
	// APIReader is consulted when the cache does not know a FalCredential,
	// so one created a moment ago is not refused; may be nil.
	APIReader client.Reader
	Config    inject.Config
	Log       logr.Logger
}

var _ admission.Handler = &Handler{}

// Handle implements admission.Handler.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, result := h.handle(ctx, req)
	admissions.WithLabelValues(result).Inc()
	if result == resultInjected || result == resultUnchanged {
		injectionDuration.Observe(time.Since(start).Seconds())
	}
	return resp
}

// Results, the label values of falguard_webhook_admissions_total.
const (
	resultInjected  = "injected"
	resultUnchanged = "unchanged" // not annotated, already injected, or not a CREATE
	resultDenied    = "denied"
	resultError     = "error"
)

func (h *Handler) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	if req.Operation != admissionv1.Create || req.Kind.Kind != "Pod" {
		return admission.Allowed("falguard injects only on pod CREATE"), resultUnchanged
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err)), resultError
	}
	name, ok := inject.CredentialName(pod)
	if !ok {
		return admission.Allowed("pod does not ask for falguard"), resultUnchanged
	}
	ns := req.Namespace
	if ns == "" {
		ns = pod.Namespace
	}
	log := h.Log.WithValues("namespace", ns, "pod", podName(pod), "credential", name)

	cred := inject.Credential{Namespace: ns}
	if name != "" {
		found, secretName, err := h.lookup(ctx, ns, name)
		if err != nil {
			log.Error(err, "looking up FalCredential")
			return admission.Errored(http.StatusInternalServerError, fmt.Errorf("look up FalCredential %s/%s: %w", ns, name, err)), resultError
		}
		cred.Exists, cred.SecretName = found, secretName
	}
	already := inject.Injected(pod)
	out, err := inject.Inject(pod, cred, h.Config)
	var d *inject.Denial
	if errors.As(err, &d) {
		log.Info("denied pod", "reason", d.Message)
		return admission.Denied(d.Message), resultDenied
	} else if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), resultError
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode pod: %w", err)), resultError
	}
	resp := admission.PatchResponseFromRaw(req.Object.Raw, raw)
	if already {
		return resp, resultUnchanged
	}
	log.V(1).Info("injected sidecar")
	return resp, resultInjected
}

// lookup finds the FalCredential in the cache, then straight from the API.
func (h *Handler) lookup(ctx context.Context, ns, name string) (bool, string, error) {
	key := client.ObjectKey{Namespace: ns, Name: name}
	for _, r := range []client.Reader{h.Client, h.APIReader} {
		if r == nil {
			continue
		}
		fc := &falguardv1alpha1.FalCredential{}
		err := r.Get(ctx, key, fc)
		if err == nil {
			return true, fc.Status.SecretName, nil
		}
		if !apierrors.IsNotFound(err) {
			return false, "", err
		}
	}
	return false, "", nil
}

// podName is the name, or generateName for pods from controllers.
func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}
