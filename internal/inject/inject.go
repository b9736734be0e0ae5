// Package inject is the pure pod mutation behind the falguard webhook: given a
// pod, what is known about the FalCredential it names, and the operator's
// configuration, it returns the pod with the sidecar added, or a Denial. It
// does no I/O, so golden fixtures (testdata/*.in.yaml next to *.out.yaml or
// *.denied.txt) pin its behaviour exactly.
//
// Pod annotations (defaults in brackets):
//
//	falguard.dev/inject: <FalCredential>     the trigger (required)
//	falguard.dev/native-sidecar: "false"     regular container instead of a native sidecar ["true"]
//	falguard.dev/sidecar-image               [the manager's --sidecar-image]
//	falguard.dev/sidecar-cpu-request         [10m]   "0" removes it
//	falguard.dev/sidecar-cpu-limit           [none]
//	falguard.dev/sidecar-memory-request      [16Mi]
//	falguard.dev/sidecar-memory-limit        [64Mi]  "0" removes it
//	falguard.dev/sidecar-log-level           debug|info|warn|error [the sidecar's default]
//	falguard.dev/proxy-port                  app API on 127.0.0.1 [4750]
//	falguard.dev/ops-port                    probes and metrics [4751]
//
// The resource and port defaults in brackets are the built-in ones; the
// manager's --sidecar-{cpu,memory}-{request,limit}, --sidecar-proxy-port and
// --sidecar-ops-port (Config.Resources, ProxyPort, OpsPort) replace them
// cluster-wide, and the annotations still win per pod.
//
// Legacy layout (native-sidecar "false", clusters before Kubernetes 1.29):
// the sidecar is the last regular container and nothing stops it when the
// app exits, so a Job's main container must end with
//
//	curl -fsS -X POST "$FALGUARD_QUIT_URL"    # http://127.0.0.1:4750/quitquitquit
//
// (or `wget -q -O- --post-data= "$FALGUARD_QUIT_URL"`), which the webhook sets
// in every app container in that layout only. Native sidecars need nothing:
// the kubelet stops them when the Job's containers finish.
package inject

import (
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
)

// Names the injector owns inside a pod.
const (
	// SidecarName is the container (native: init container) it adds.
	SidecarName = "falguard-sidecar"
	// VolumeName is the Secret volume holding `key` and `policy.json`.
	VolumeName = "falguard-credentials"
	// CredentialsDir is where that volume is mounted, in the sidecar only.
	CredentialsDir = "/var/run/falguard/credentials"
	// OpsPortName names the sidecar's probes/metrics port.
	OpsPortName = "falguard-ops"
	// SidecarUID is the non-root user (and group) the sidecar runs as.
	SidecarUID = 65532

	// Env vars set in app containers unless the pod sets them.
	EnvProxyURL    = "FAL_PROXY_URL"
	EnvTokenURL    = "FAL_TOKEN_URL"
	EnvRealtimeURL = "FAL_REALTIME_URL"
	// EnvQuitURL is set in app containers in the legacy (non-native) layout:
	// a Job's last step POSTs to it so the sidecar exits and the Job completes.
	EnvQuitURL = "FALGUARD_QUIT_URL"
	// EnvLogLevel carries falguard.dev/sidecar-log-level to the sidecar.
	EnvLogLevel = "FALGUARD_LOG_LEVEL"

	// AnnotationInjectKey is api/v1alpha1's trigger annotation.
	AnnotationInjectKey = falguardv1alpha1.AnnotationInject
	// LabelCredential marks injected pods so the controller can count them.
	LabelCredential = falguardv1alpha1.LabelCredential
)

// Config is the operator-wide part of the sidecar, from the manager's flags.
type Config struct {
	// Image is the default sidecar image (falguard.dev/sidecar-image overrides).
	Image string
	// PullPolicy, when set, is the sidecar's imagePullPolicy.
	PullPolicy corev1.PullPolicy
	// Env is added to every sidecar's env (e.g. proxies, upstream overrides).
	Env []corev1.EnvVar
	// Resources are the sidecar's cluster-wide default requests and limits;
	// each falguard.dev/sidecar-{cpu,memory}-{request,limit} annotation
	// overrides its entry. nil means DefaultResources().
	Resources *corev1.ResourceRequirements
	// ProxyPort and OpsPort are the default ports (falguard.dev/proxy-port and
	// falguard.dev/ops-port override them); 0 means DefaultProxyPort and
	// DefaultOpsPort.
	ProxyPort, OpsPort int32
}

// DefaultResources are the sidecar's resources when neither the manager nor
// the pod says otherwise: 10m CPU and 16Mi memory requested, 64Mi memory limit.
func DefaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(DefaultCPURequest),
			corev1.ResourceMemory: resource.MustParse(DefaultMemoryRequest),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse(DefaultMemoryLimit),
		},
	}
}

// defaultResources returns a copy the caller may change, with non-nil lists.
func (c Config) defaultResources() corev1.ResourceRequirements {
	r := DefaultResources()
	if c.Resources != nil {
		r = *c.Resources.DeepCopy()
	}
	if r.Requests == nil {
		r.Requests = corev1.ResourceList{}
	}
	if r.Limits == nil {
		r.Limits = corev1.ResourceList{}
	}
	return r
}

func (c Config) defaultProxyPort() int32 {
	if c.ProxyPort == 0 {
		return DefaultProxyPort
	}
	return c.ProxyPort
}

func (c Config) defaultOpsPort() int32 {
	if c.OpsPort == 0 {
		return DefaultOpsPort
	}
	return c.OpsPort
}

// Validate applies the annotations' checks to the manager-wide defaults, once
// at start-up, so a bad default stops the manager instead of denying every
// pod. Errors name the manager flag that sets the value.
func (c Config) Validate() error {
	r := c.defaultResources()
	for _, list := range []struct {
		what string
		l    corev1.ResourceList
	}{{"request", r.Requests}, {"limit", r.Limits}} {
		for name, q := range list.l {
			if q.Sign() < 0 {
				return fmt.Errorf("--sidecar-%s-%s=%s is negative: set a quantity such as 50m or 32Mi, or \"0\" for none", name, list.what, q.String())
			}
		}
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := r.Requests[name]
		lim, hasLim := r.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			return fmt.Errorf("--sidecar-%s-request=%s is above --sidecar-%s-limit=%s: raise the limit or lower the request", name, req.String(), name, lim.String())
		}
	}
	for _, p := range []struct {
		flag string
		port int32
	}{{"--sidecar-proxy-port", c.ProxyPort}, {"--sidecar-ops-port", c.OpsPort}} {
		if p.port != 0 && (p.port < minPort || p.port > 65535) {
			return fmt.Errorf("%s=%d is not a usable port: set a number from %d to 65535 (the sidecar runs without the capability to bind lower ports)", p.flag, p.port, minPort)
		}
	}
	if c.defaultProxyPort() == c.defaultOpsPort() {
		return fmt.Errorf("--sidecar-proxy-port and --sidecar-ops-port both give port %d: give the app API and the ops listener different ports", c.defaultProxyPort())
	}
	return nil
}

// Credential is what the webhook found about the FalCredential a pod names.
type Credential struct {
	// Namespace is the pod's namespace, used in messages.
	Namespace string
	// Exists is false when no FalCredential of that name is in the namespace.
	Exists bool
	// SecretName is the managed Secret to mount; empty means the default
	// api/v1alpha1.ManagedSecretName.
	SecretName string
}

// Denial is a refusal with a message for the person who created the pod.
type Denial struct{ Message string }

func (d *Denial) Error() string { return d.Message }

// CredentialName returns the FalCredential a pod asks for, and whether it asks.
func CredentialName(pod *corev1.Pod) (string, bool) {
	name, ok := pod.Annotations[AnnotationInjectKey]
	return name, ok
}

// Injected reports whether the webhook already mutated the pod.
func Injected(pod *corev1.Pod) bool {
	return pod.Annotations[AnnotationStatus] == StatusInjected
}

// Inject returns a mutated copy of pod, or a *Denial. A pod that does not carry
// the inject annotation is returned unchanged. Inject is idempotent: a pod it
// already mutated comes back unchanged, except that app containers added since
// (by another webhook, on reinvocation) get the FAL_* env too.
func Inject(in *corev1.Pod, cred Credential, cfg Config) (*corev1.Pod, error) {
	if _, ok := CredentialName(in); !ok {
		return in.DeepCopy(), nil
	}
	opts, err := parseOptions(in.Annotations, cfg)
	if err != nil {
		return nil, err
	}
	if !cred.Exists {
		return nil, denyf("FalCredential %q not found in namespace %q: create it first (kubectl get falcredentials -n %s lists those that exist), or fix annotation %s",
			opts.credential, cred.Namespace, cred.Namespace, AnnotationInjectKey)
	}
	spec := &in.Spec
	if spec.HostNetwork {
		return nil, denyf("pod uses hostNetwork: the falguard sidecar listens on 127.0.0.1, which would be the node's loopback and shared with every host-network pod; remove hostNetwork or remove annotation %s", AnnotationInjectKey)
	}
	if ptr.Deref(spec.ShareProcessNamespace, false) {
		return nil, denyf("pod sets shareProcessNamespace: true, which would let app containers read the sidecar's credential files through /proc; remove it or remove annotation %s", AnnotationInjectKey)
	}

	out := in.DeepCopy()
	if !Injected(in) {
		if err := checkConflicts(in, opts); err != nil {
			return nil, err
		}
		addSidecar(out, opts, cred, cfg)
	}
	addAppEnv(out, opts)
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	out.Labels[LabelCredential] = opts.credential
	out.Annotations[AnnotationStatus] = StatusInjected
	return out, nil
}

// checkConflicts refuses pods whose names or ports collide with the sidecar's.
func checkConflicts(pod *corev1.Pod, o options) error {
	all := append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...)
	for _, c := range all {
		if c.Name == SidecarName {
			return denyf("container name %q is reserved for the injected sidecar: rename the container, or remove annotation %s", SidecarName, AnnotationInjectKey)
		}
		for _, p := range c.Ports {
			for _, clash := range []struct {
				port int32
				what string
				ann  string
			}{{o.proxyPort, "app API", AnnotationProxyPort}, {o.opsPort, "ops listener", AnnotationOpsPort}} {
				if p.ContainerPort == clash.port || p.HostPort == clash.port {
					return denyf("container %q uses port %d, which the falguard sidecar's %s needs: change the container's port, or move the sidecar with annotation %s (a free port from %d to 65535)",
						c.Name, clash.port, clash.what, clash.ann, minPort)
				}
			}
			if p.Name == OpsPortName {
				return denyf("container %q has a port named %q, which is reserved for the sidecar: rename the port", c.Name, OpsPortName)
			}
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == VolumeName {
			return denyf("volume name %q is reserved for the sidecar's credentials: rename the volume, or remove annotation %s", VolumeName, AnnotationInjectKey)
		}
	}
	return nil
}

func addSidecar(pod *corev1.Pod, o options, cred Credential, cfg Config) {
	secret := cred.SecretName
	if secret == "" {
		secret = falguardv1alpha1.ManagedSecretName(o.credential)
	}
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
		Name:         VolumeName,
		VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secret}},
	})

	env := append([]corev1.EnvVar{}, cfg.Env...)
	if o.logLevel != "" {
		env = setEnv(env, EnvLogLevel, o.logLevel)
	}
	if len(env) == 0 {
		env = nil
	}
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(o.opsPort),
			}},
			PeriodSeconds:    period,
			FailureThreshold: failures,
			TimeoutSeconds:   1,
		}
	}
	c := corev1.Container{
		Name:            SidecarName,
		Image:           o.image,
		ImagePullPolicy: cfg.PullPolicy,
		Args: []string{
			"run",
			"--listen=127.0.0.1:" + strconv.Itoa(int(o.proxyPort)),
			"--ops-listen=:" + strconv.Itoa(int(o.opsPort)),
			"--credentials-dir=" + CredentialsDir,
		},
		Env:   env,
		Ports: []corev1.ContainerPort{{Name: OpsPortName, ContainerPort: o.opsPort, Protocol: corev1.ProtocolTCP}},
		// Startup gates the app containers (native sidecars): up to 2 minutes
		// for the key and policy to load.
		StartupProbe:   probe("/startupz", 1, 120),
		LivenessProbe:  probe("/livez", 10, 3),
		ReadinessProbe: probe("/readyz", 5, 2),
		Resources:      o.resources,
		VolumeMounts:   []corev1.VolumeMount{{Name: VolumeName, MountPath: CredentialsDir, ReadOnly: true}},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To[int64](SidecarUID),
			RunAsGroup:               ptr.To[int64](SidecarUID),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if o.native {
		// After every existing init container: an Istio-style istio-init must
		// still run first, and the app starts only once our startupProbe passes.
		c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, c)
	} else {
		pod.Spec.Containers = append(pod.Spec.Containers, c)
	}
}

// addAppEnv points every app container at the sidecar; a value the pod
// already sets (env, not envFrom) always wins.
func addAppEnv(pod *corev1.Pod, o options) {
	base := "127.0.0.1:" + strconv.Itoa(int(o.proxyPort))
	vars := []corev1.EnvVar{
		{Name: EnvProxyURL, Value: "http://" + base + "/api/fal/proxy"},
		{Name: EnvTokenURL, Value: "http://" + base + "/api/fal/token"},
		{Name: EnvRealtimeURL, Value: "ws://" + base + "/realtime"},
	}
	if !o.native {
		vars = append(vars, corev1.EnvVar{Name: EnvQuitURL, Value: "http://" + base + "/quitquitquit"})
	}
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		if c.Name == SidecarName {
			continue
		}
		for _, v := range vars {
			if !hasEnv(c.Env, v.Name) {
				c.Env = append(c.Env, v)
			}
		}
	}
}

func hasEnv(env []corev1.EnvVar, name string) bool {
	for _, e := range env {
		if e.Name == name {
			return true
		}
	}
	return false
}

// setEnv replaces or appends name, so an annotation beats a manager-wide flag.
func setEnv(env []corev1.EnvVar, name, value string) []corev1.EnvVar {
	for i := range env {
		if env[i].Name == name {
			env[i] = corev1.EnvVar{Name: name, Value: value}
			return env
		}
	}
	return append(env, corev1.EnvVar{Name: name, Value: value})
}
