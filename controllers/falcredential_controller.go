package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/internal/falapi"
	"github.com/falguard/falguard/internal/rotation"
)

// FalAPI is what the reconciler needs from fal; *falapi.Client implements it.
type FalAPI interface {
	MintToken(ctx context.Context, key string, apps []string, ttl time.Duration) error
	CreateKey(ctx context.Context, adminKey, alias string) (falapi.CreatedKey, error)
	ListKeys(ctx context.Context, adminKey string) ([]falapi.KeyInfo, error)
	DeleteKey(ctx context.Context, adminKey, keyID string) error
}

// Steps of a rotation at which Hook is called (crash-safety tests stop the
// manager there).
const (
	StepBeforeCreate = "before-create" // pendingKeyAlias recorded, key not yet created
	StepAfterCreate  = "after-create"  // key created at fal, not yet published
	StepAfterPublish = "after-publish" // new key in the managed Secret, status not yet updated
	StepBeforeRevoke = "before-revoke" // previous key about to be deleted at fal
	StepAfterRevoke  = "after-revoke"  // previous key deleted at fal, not yet recorded
)

// Defaults for FalCredentialReconciler's tunables.
const (
	DefaultVerifyRate    = 20 // token mints per second, all credentials together
	DefaultVerifyBurst   = 20
	DefaultMaxConcurrent = 4
	DefaultBackoffBase   = 2 * time.Second
	DefaultBackoffMax    = 5 * time.Minute
	defaultKeyName       = "FAL_KEY"
	indexSecretRefs      = "falguard.dev/secret-refs"
	verifyWaitBudget     = time.Second
	minRequeue           = 200 * time.Millisecond
	conflictRequeue      = 500 * time.Millisecond
)

// FalCredentialReconciler reconciles FalCredentials into managed Secrets,
// verifies keys with fal and rotates them through fal's Platform API.
type FalCredentialReconciler struct {
	// Client reads FalCredentials from the cache and writes everything.
	Client client.Client
	// APIReader reads Secrets straight from the API server: Secrets are not
	// cached (see SetupWithManager), and rotation decisions must see the
	// managed Secret as it is, never a stale copy.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Fal       FalAPI
	Clock     rotation.Clock

	// VerifyRate and VerifyBurst bound key verifications (token mints) per
	// second across all credentials, so a thousand credentials at start-up do
	// not hammer fal. Zero takes the defaults.
	VerifyRate  float64
	VerifyBurst int
	// MaxConcurrentReconciles; zero takes DefaultMaxConcurrent.
	MaxConcurrentReconciles int
	// BackoffBase and BackoffMax shape the jittered backoff after fal errors.
	BackoffBase, BackoffMax time.Duration
	// SkipNameValidation lets tests start several managers in one process.
	SkipNameValidation bool
	// Hook, for tests only, is called at each rotation step; an error aborts
	// the reconcile there as if the process had died.
	Hook func(ctx context.Context, fc types.NamespacedName, step string) error

	podReader client.Reader
	limiter   *rate.Limiter
	mu        sync.Mutex
	backoffs  map[types.NamespacedName]*backoffState
	verified  map[types.NamespacedName]verifyRecord
}

type backoffState struct {
	attempts  int
	notBefore time.Time
}

// run is one reconcile's working state.
type run struct {
	fc      *falguardv1alpha1.FalCredential
	req     types.NamespacedName
	now     time.Time
	written falguardv1alpha1.FalCredentialStatus // status as last written

	sec *corev1.Secret // managed Secret, fresh from the API server; nil if absent
	d   durable        // lifecycle record (from sec, else status)

	key, keyID string // key to publish; never logged
	source     falguardv1alpha1.KeySource
	noKeyWhy   string // reason when key == ""
	noKeyMsg   string

	requeue []time.Time
}

func (rn *run) setKey(key, id string, src falguardv1alpha1.KeySource) {
	rn.key, rn.keyID, rn.source = key, id, src
}

func (rn *run) after(t time.Time) { rn.requeue = append(rn.requeue, t) }

// +kubebuilder:rbac:groups=falguard.dev,resources=falcredentials,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=falguard.dev,resources=falcredentials/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=falguard.dev,resources=falcredentials/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one FalCredential to its desired state.
func (r *FalCredentialReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	fc := &falguardv1alpha1.FalCredential{}
	if err := r.Client.Get(ctx, req.NamespacedName, fc); err != nil {
		if apierrors.IsNotFound(err) {
			forgetCredentialMetrics(req.Namespace, req.Name)
			r.forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("reading FalCredential: %w", err)
	}
	if !fc.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, fc)
	}
	if fc.Spec.Rotation != nil && !controllerutil.ContainsFinalizer(fc, falguardv1alpha1.Finalizer) {
		controllerutil.AddFinalizer(fc, falguardv1alpha1.Finalizer)
		if err := r.Client.Update(ctx, fc); err != nil {
			return conflictOr(fmt.Errorf("adding finalizer: %w", err))
		}
	}

	rn := &run{fc: fc, req: req.NamespacedName, now: r.Clock.Now(), written: *fc.Status.DeepCopy()}
	syncErr := r.sync(ctx, rn)
	if errors.Is(syncErr, errAborted) {
		return ctrl.Result{}, syncErr
	}
	if err := r.finishStatus(ctx, rn); err != nil {
		return conflictOr(err)
	}
	if syncErr != nil {
		var fe *falError
		if errors.As(syncErr, &fe) {
			// fal trouble is already in the conditions; retry at the backoff time.
			return r.result(rn), nil
		}
		return conflictOr(syncErr)
	}
	return r.result(rn), nil
}

func (r *FalCredentialReconciler) result(rn *run) ctrl.Result {
	if bs := r.backoffOf(rn.req); bs != nil {
		rn.after(bs.notBefore)
	}
	d, ok := rotation.Requeue(rn.now, rn.requeue...)
	if !ok {
		return ctrl.Result{}
	}
	if d < minRequeue {
		d = minRequeue
	}
	return ctrl.Result{RequeueAfter: d}
}

// errAborted marks a reconcile stopped by Hook.
var errAborted = errors.New("reconcile aborted by hook")

// falError wraps a fal failure that has been recorded in a condition and
// scheduled for a retry with backoff.
type falError struct{ err error }

func (e *falError) Error() string { return e.err.Error() }
func (e *falError) Unwrap() error { return e.err }

func conflictOr(err error) (ctrl.Result, error) {
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		// Someone (often our own previous write, not yet in the cache) won the
		// race: look again shortly instead of logging an error.
		return ctrl.Result{RequeueAfter: conflictRequeue}, nil
	}
	return ctrl.Result{}, err
}

func (r *FalCredentialReconciler) hook(ctx context.Context, rn *run, step string) error {
	if r.Hook == nil {
		return nil
	}
	if err := r.Hook(ctx, rn.req, step); err != nil {
		return fmt.Errorf("%w at %s: %w", errAborted, step, err)
	}
	return nil
}

// sync does everything but the final status write.
func (r *FalCredentialReconciler) sync(ctx context.Context, rn *run) error {
	fc := rn.fc
	if err := r.readManagedSecret(ctx, rn); err != nil {
		return err
	}
	if rn.sec != nil && !ownedBy(rn.sec, fc.UID) && rn.sec.Labels[LabelManagedBy] != ManagedByValue {
		rn.noKeyWhy, rn.noKeyMsg = ReasonSecretConflict, fmt.Sprintf("Secret %s already exists and is not managed by falguard: rename or delete it", rn.sec.Name)
		return nil
	}
	// A managed Secret left by an earlier FalCredential of the same name (not
	// yet garbage collected) is taken over, but its record is not ours.
	owned := rn.sec != nil && ownedBy(rn.sec, fc.UID)
	if owned {
		rn.d = durableFrom(rn.sec, &fc.Status)
	} else {
		rn.d = durableFrom(nil, &fc.Status)
	}
	rot := fc.Spec.Rotation

	// The key to publish: an operator-created key (kept only in the managed
	// Secret) while rotation owns the lifecycle, else the user's Secret.
	if rot != nil && rn.d.Source == falguardv1alpha1.KeySourceOperator && owned {
		raw := string(rn.sec.Data["key"])
		if id, _, err := falapi.ParseKey(raw); err == nil && id == rn.d.KeyID {
			rn.setKey(strings.TrimSpace(raw), id, falguardv1alpha1.KeySourceOperator)
		}
	}
	// The operator's key is lost when the managed Secret was deleted or edited
	// by hand: its secret exists nowhere else. Rotation below creates a new
	// key and schedules the lost one for deletion like any replaced key (the
	// user's Secret is not used instead: that would forget the lost key).
	operatorLost := rn.key == "" && rot != nil && rn.d.Source == falguardv1alpha1.KeySourceOperator && rn.d.KeyID != ""
	if operatorLost {
		r.event(fc, corev1.EventTypeWarning, ReasonKeyLost, "Rotate", "operator-created key %s is gone from Secret %s; creating a new key, the lost one will be deleted at fal", rn.d.KeyID, falguardv1alpha1.ManagedSecretName(fc.Name))
	}
	if rn.key == "" && !operatorLost && fc.Spec.SecretRef != nil {
		key, why, err := r.readKey(ctx, fc.Namespace, *fc.Spec.SecretRef)
		if err != nil {
			rn.noKeyWhy, rn.noKeyMsg = why, err.Error()
		} else {
			id, _, _ := falapi.ParseKey(key)
			rn.setKey(key, id, falguardv1alpha1.KeySourceUser)
		}
	}

	if rot == nil && rn.d.Source == falguardv1alpha1.KeySourceOperator && rn.key != "" && rn.d.KeyID != rn.keyID {
		// Without spec.rotation there is no admin key to delete them with.
		r.event(fc, corev1.EventTypeWarning, ReasonKeyAbandoned, "Publish", "spec.rotation was removed: operator-created key %s (and previous key %q) are left alive at fal; delete them in fal's dashboard if unused", rn.d.KeyID, rn.d.PreviousKeyID)
		rn.d.PreviousKeyID, rn.d.PreviousRevokeAt = "", time.Time{}
	}
	if rot != nil {
		if err := r.syncRotation(ctx, rn); err != nil {
			return err
		}
	} else {
		meta.RemoveStatusCondition(&fc.Status.Conditions, falguardv1alpha1.ConditionRotation)
	}
	if rn.key == "" {
		return nil
	}
	d := rn.d
	if d.KeyID != rn.keyID {
		d.KeyID, d.Source, d.PublishedAt = rn.keyID, rn.source, rn.now
	}
	if err := r.publish(ctx, rn, d); err != nil {
		return err
	}
	return r.verify(ctx, rn)
}

func (r *FalCredentialReconciler) readManagedSecret(ctx context.Context, rn *run) error {
	sec := &corev1.Secret{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: rn.fc.Namespace, Name: falguardv1alpha1.ManagedSecretName(rn.fc.Name)}, sec)
	switch {
	case apierrors.IsNotFound(err):
		rn.sec = nil
	case err != nil:
		return fmt.Errorf("reading managed Secret: %w", err)
	default:
		rn.sec = sec
	}
	return nil
}

// readKey reads one fal key from a Secret, returning a reason a person can act
// on when it is unusable. The error never holds the key.
func (r *FalCredentialReconciler) readKey(ctx context.Context, ns string, ref falguardv1alpha1.SecretKeySelector) (string, string, error) {
	name := ref.Key
	if name == "" {
		name = defaultKeyName
	}
	sec := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: ref.Name}, sec); err != nil {
		if apierrors.IsNotFound(err) {
			return "", ReasonSecretNotFound, fmt.Errorf("secret %s/%s not found: create it with the fal key under %q", ns, ref.Name, name)
		}
		return "", ReasonSecretNotFound, fmt.Errorf("reading Secret %s/%s: %w", ns, ref.Name, err)
	}
	raw, ok := sec.Data[name]
	if !ok || len(strings.TrimSpace(string(raw))) == 0 {
		return "", ReasonKeyMissing, fmt.Errorf("secret %s/%s has no key %q (or it is empty): add the fal key there, or point secretRef.key at the right one", ns, ref.Name, name)
	}
	key := strings.TrimSpace(string(raw))
	if _, _, err := falapi.ParseKey(key); err != nil {
		return "", ReasonKeyMalformed, fmt.Errorf("secret %s/%s key %q: %w", ns, ref.Name, name, err)
	}
	return key, "", nil
}

// publish writes the managed Secret with the current key and lifecycle record d.
func (r *FalCredentialReconciler) publish(ctx context.Context, rn *run, d durable) error {
	fc := rn.fc
	want, err := desiredSecret(fc, rn.key, rn.keyID, d)
	if err != nil {
		rn.noKeyWhy, rn.noKeyMsg = ReasonInvalidSpec, err.Error()
		rn.key = ""
		return nil
	}
	before := ""
	if rn.sec != nil {
		before = rn.sec.Annotations[AnnKeyID]
		have := rn.sec.DeepCopy()
		if !mergeInto(have, want) {
			rn.d = d
			return nil
		}
		if err := r.Client.Update(ctx, have); err != nil {
			return fmt.Errorf("updating managed Secret %s: %w", have.Name, err)
		}
		rn.sec = have
	} else {
		if err := r.Client.Create(ctx, want); err != nil {
			return fmt.Errorf("creating managed Secret %s: %w", want.Name, err)
		}
		rn.sec = want
	}
	rn.d = d
	if before != rn.keyID {
		r.event(fc, corev1.EventTypeNormal, ReasonKeyPublished, "Publish", "published key %s (%s) to Secret %s", rn.keyID, rn.source, want.Name)
	}
	return nil
}

// verify mints one token with a key fal has not yet been asked about.
func (r *FalCredentialReconciler) verify(ctx context.Context, rn *run) error {
	fc := rn.fc
	h := keyHash(rn.key)
	kv := meta.FindStatusCondition(fc.Status.Conditions, falguardv1alpha1.ConditionKeyVerified)
	if fc.Status.VerifiedKeyHash == h && kv != nil && kv.Status != metav1.ConditionUnknown {
		return nil
	}
	if v, ok := r.verifiedOf(rn.req); ok && v.hash == h {
		// Answered already; our status write is just not in the cache yet.
		fc.Status.VerifiedKeyHash = h
		r.setCond(fc, falguardv1alpha1.ConditionKeyVerified, v.status, v.reason, v.msg)
		return nil
	}
	if fc.Status.VerifiedKeyHash != h {
		fc.Status.VerifiedKeyHash = ""
		if kv == nil || kv.Status != metav1.ConditionUnknown {
			r.setCond(fc, falguardv1alpha1.ConditionKeyVerified, metav1.ConditionUnknown, ReasonVerificationPending, fmt.Sprintf("key %s is about to be checked with fal", rn.keyID))
		}
	}
	if bs := r.backoffOf(rn.req); bs != nil && rn.now.Before(bs.notBefore) {
		return nil
	}
	// Spread verifications: wait briefly for a slot, else come back later.
	res := r.limiter.ReserveN(rn.now, 1)
	if delay := res.DelayFrom(rn.now); delay > verifyWaitBudget {
		res.CancelAt(rn.now)
		rn.after(rn.now.Add(delay + rotation.Spread(delay, nil)))
		return nil
	} else if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ttl := fc.Spec.Token.TTL.Duration
	if ttl <= 0 {
		ttl = 120 * time.Second
	}
	err := r.Fal.MintToken(ctx, rn.key, []string{appAlias(fc.Spec.AllowedApps)}, ttl)
	switch {
	case err == nil:
		r.falOK(rn.req)
		r.setVerified(rn.req, verifyRecord{h, metav1.ConditionTrue, ReasonKeyAccepted, fmt.Sprintf("fal minted a token with key %s", rn.keyID)})
		fc.Status.VerifiedKeyHash = h
		r.setCond(fc, falguardv1alpha1.ConditionKeyVerified, metav1.ConditionTrue, ReasonKeyAccepted, fmt.Sprintf("fal minted a token with key %s", rn.keyID))
		return nil
	case falapi.IsRejection(err):
		r.falOK(rn.req)
		msg := fmt.Sprintf("key %s is published but fal refused it: %v; fix the key in the Secret", rn.keyID, err)
		r.setVerified(rn.req, verifyRecord{h, metav1.ConditionFalse, ReasonKeyRejected, msg})
		fc.Status.VerifiedKeyHash = h
		r.setCond(fc, falguardv1alpha1.ConditionKeyVerified, metav1.ConditionFalse, ReasonKeyRejected, msg)
		r.event(fc, corev1.EventTypeWarning, ReasonKeyRejected, "Verify", "fal refused key %s: %v", rn.keyID, err)
		return nil
	default:
		wait := r.falFail(rn.req, rn.now, err)
		why := ReasonFalUnreachable
		if !falapi.IsTransient(err) {
			why = ReasonVerificationFailed
		}
		if prev := meta.FindStatusCondition(fc.Status.Conditions, falguardv1alpha1.ConditionKeyVerified); prev == nil || prev.Reason != why {
			r.event(fc, corev1.EventTypeWarning, why, "Verify", "could not check key %s with fal: %v", rn.keyID, err)
		}
		r.setCond(fc, falguardv1alpha1.ConditionKeyVerified, metav1.ConditionUnknown, why, fmt.Sprintf("could not check key %s with fal: %v; retrying in %s", rn.keyID, err, wait.Round(time.Second)))
		return &falError{err}
	}
}

// appAlias picks the app alias to mint the verification token for: the alias
// segment of the first allowedApps entry without wildcards.
func appAlias(apps []string) string {
	fallback := ""
	for _, a := range apps {
		segs := strings.Split(a, "/")
		if len(segs) < 2 {
			continue
		}
		if !strings.ContainsAny(segs[1], "*?") {
			return segs[1]
		}
		if fallback == "" {
			fallback = strings.Trim(strings.NewReplacer("*", "", "?", "").Replace(segs[1]), "-_.")
		}
	}
	if fallback == "" {
		fallback = "realtime"
	}
	return fallback
}

// finishStatus computes Ready and the mirrored fields and writes status if it changed.
func (r *FalCredentialReconciler) finishStatus(ctx context.Context, rn *run) error {
	fc := rn.fc
	st := &fc.Status
	st.ObservedGeneration = fc.Generation
	if rn.key != "" {
		st.KeyID, st.KeySource = rn.keyID, rn.source
		st.SecretName = falguardv1alpha1.ManagedSecretName(fc.Name)
	} else if rn.sec == nil {
		st.KeyID, st.KeySource, st.SecretName = "", "", ""
	}
	st.PreviousKeyID, st.PreviousKeyRevokeAt = rn.d.PreviousKeyID, metaTime(rn.d.PreviousRevokeAt)
	st.LastRotateNow = rn.d.LastRotateNow
	st.LastRotationTime, st.NextRotationTime = nil, nil
	if rn.source == falguardv1alpha1.KeySourceOperator {
		st.LastRotationTime = metaTime(rn.d.PublishedAt)
	}
	if rot := fc.Spec.Rotation; rot != nil && rn.key != "" {
		next := rotation.NextRotation(rotation.State{HaveKey: true, PublishedAt: rn.d.PublishedAt, Every: rot.Every.Duration})
		st.NextRotationTime = metaTime(next)
		rn.after(next)
	}
	if !rn.d.PreviousRevokeAt.IsZero() {
		rn.after(rn.d.PreviousRevokeAt)
	}
	observeSchedule(fc.Namespace, fc.Name, st)
	if n, err := r.countPods(ctx, fc); err == nil {
		st.Pods = n
	} else {
		ctrl.LoggerFrom(ctx).Error(err, "counting pods")
	}

	kv := meta.FindStatusCondition(st.Conditions, falguardv1alpha1.ConditionKeyVerified)
	switch {
	case rn.key == "":
		why, msg := rn.noKeyWhy, rn.noKeyMsg
		if rc := meta.FindStatusCondition(st.Conditions, falguardv1alpha1.ConditionRotation); why == "" && rc != nil && rc.Status == metav1.ConditionFalse {
			// backing off after a failed rotation: keep saying why
			why, msg = rc.Reason, "no key yet: "+rc.Message
		}
		if why == "" {
			why, msg = ReasonNoKey, "no key yet"
		}
		r.markAsFailed(fc, why, msg)
	case kv != nil && kv.Status == metav1.ConditionFalse:
		r.markAsFailed(fc, ReasonKeyRejected, kv.Message)
	case kv == nil || kv.Status == metav1.ConditionUnknown:
		why, msg := ReasonVerificationPending, "key published, waiting to check it with fal"
		if kv != nil {
			why, msg = kv.Reason, "key published but not verified: "+kv.Message
		}
		r.markAsFailed(fc, why, msg)
	default:
		r.markAsDone(fc, fmt.Sprintf("key %s (%s) published in Secret %s and accepted by fal", rn.keyID, rn.source, st.SecretName))
	}
	if equality.Semantic.DeepEqual(rn.written, *st) {
		return nil
	}
	return r.writeStatus(ctx, rn)
}

func (r *FalCredentialReconciler) writeStatus(ctx context.Context, rn *run) error {
	if err := r.Client.Status().Update(ctx, rn.fc); err != nil {
		return fmt.Errorf("updating status: %w", err)
	}
	rn.written = *rn.fc.Status.DeepCopy()
	return nil
}

func (r *FalCredentialReconciler) countPods(ctx context.Context, fc *falguardv1alpha1.FalCredential) (int32, error) {
	if r.podReader == nil {
		return 0, nil
	}
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	if err := r.podReader.List(ctx, list, client.InNamespace(fc.Namespace), client.MatchingLabels{falguardv1alpha1.LabelCredential: fc.Name}); err != nil {
		return 0, err
	}
	var n int32
	for i := range list.Items {
		if list.Items[i].DeletionTimestamp.IsZero() {
			n++
		}
	}
	return n, nil
}

// --- backoff bookkeeping (per credential, in memory) ---

func (r *FalCredentialReconciler) backoffOf(k types.NamespacedName) *backoffState {
	r.mu.Lock()
	defer r.mu.Unlock()
	if bs, ok := r.backoffs[k]; ok {
		c := *bs
		return &c
	}
	return nil
}

// falAllowed reports whether fal may be called for k now.
func (r *FalCredentialReconciler) falAllowed(k types.NamespacedName, now time.Time) bool {
	bs := r.backoffOf(k)
	return bs == nil || !now.Before(bs.notBefore)
}

func (r *FalCredentialReconciler) falFail(k types.NamespacedName, now time.Time, err error) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	bs := r.backoffs[k]
	if bs == nil {
		bs = &backoffState{}
		r.backoffs[k] = bs
	}
	bs.attempts++
	d := rotation.Backoff(bs.attempts, r.BackoffBase, r.BackoffMax, falapi.RetryAfter(err), nil)
	bs.notBefore = now.Add(d)
	return d
}

func (r *FalCredentialReconciler) falOK(k types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.backoffs, k)
}

func (r *FalCredentialReconciler) forget(k types.NamespacedName) {
	r.falOK(k)
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.verified, k)
}

// verifyRecord remembers fal's verdict on a key hash, so a reconcile that
// reads a FalCredential from a cache not yet showing our last status write
// does not ask fal again.
type verifyRecord struct {
	hash   string
	status metav1.ConditionStatus
	reason string
	msg    string
}

func (r *FalCredentialReconciler) verifiedOf(k types.NamespacedName) (verifyRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.verified[k]
	return v, ok
}

func (r *FalCredentialReconciler) setVerified(k types.NamespacedName, v verifyRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.verified[k] = v
}
