package inject

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Pod annotations read or written by the injector. AnnotationInject itself
// lives in api/v1alpha1 because the controller counts pods by it too.
const (
	// AnnotationStatus is written on injected pods; its presence makes a
	// second pass a no-op.
	AnnotationStatus = "falguard.dev/status"
	// StatusInjected is the only value AnnotationStatus takes.
	StatusInjected = "injected"

	// AnnotationNativeSidecar: "false" gives a regular container instead of a
	// native sidecar, for clusters older than Kubernetes 1.29.
	AnnotationNativeSidecar = "falguard.dev/native-sidecar"
	// AnnotationImage overrides the sidecar image.
	AnnotationImage = "falguard.dev/sidecar-image"
	// AnnotationCPURequest, AnnotationCPULimit, AnnotationMemoryRequest and
	// AnnotationMemoryLimit override the sidecar's resources ("0" removes one).
	AnnotationCPURequest    = "falguard.dev/sidecar-cpu-request"
	AnnotationCPULimit      = "falguard.dev/sidecar-cpu-limit"
	AnnotationMemoryRequest = "falguard.dev/sidecar-memory-request"
	AnnotationMemoryLimit   = "falguard.dev/sidecar-memory-limit"
	// AnnotationLogLevel sets the sidecar's --log-level (as FALGUARD_LOG_LEVEL).
	AnnotationLogLevel = "falguard.dev/sidecar-log-level"
	// AnnotationProxyPort moves the app API off 4750 (loopback only).
	AnnotationProxyPort = "falguard.dev/proxy-port"
	// AnnotationOpsPort moves the probes/metrics listener off 4751.
	AnnotationOpsPort = "falguard.dev/ops-port"
)

// Built-in defaults for what the annotations override (Config can replace
// the resources and ports cluster-wide).
const (
	DefaultProxyPort     = 4750
	DefaultOpsPort       = 4751
	DefaultCPURequest    = "10m"
	DefaultMemoryRequest = "16Mi"
	DefaultMemoryLimit   = "64Mi"
	// minPort keeps the sidecar, which runs without capabilities, off
	// privileged ports it could not bind.
	minPort = 1024
)

var logLevels = []string{"debug", "info", "warn", "error"}

// knownSidecarAnnotations lets a typo such as falguard.dev/sidecar-memory
// be refused instead of silently ignored.
var knownSidecarAnnotations = map[string]bool{
	AnnotationImage: true, AnnotationCPURequest: true, AnnotationCPULimit: true,
	AnnotationMemoryRequest: true, AnnotationMemoryLimit: true, AnnotationLogLevel: true,
}

// options are the per-pod choices, parsed and validated from annotations.
type options struct {
	credential string
	native     bool
	image      string
	resources  corev1.ResourceRequirements
	logLevel   string
	proxyPort  int32
	opsPort    int32
}

// parseOptions validates every falguard.dev annotation on the pod. Each
// error names the annotation, what is wrong and what to write instead.
func parseOptions(ann map[string]string, cfg Config) (options, error) {
	o := options{native: true, image: cfg.Image}

	o.credential = ann[AnnotationInjectKey]
	if errs := validation.IsDNS1123Subdomain(o.credential); len(errs) > 0 || len(o.credential) > 63 {
		return o, denyf("annotation %s=%q is not a FalCredential name: set it to the metadata.name of a FalCredential in this namespace (lowercase letters, digits, '-' and '.', at most 63 characters)",
			AnnotationInjectKey, o.credential)
	}

	var unknown []string
	for k := range ann {
		if strings.HasPrefix(k, "falguard.dev/sidecar-") && !knownSidecarAnnotations[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return o, denyf("unknown annotation %s: remove it or use one of %s", strings.Join(unknown, ", "), strings.Join(sortedKeys(knownSidecarAnnotations), ", "))
	}

	if v, ok := ann[AnnotationNativeSidecar]; ok {
		switch v {
		case "true":
		case "false":
			o.native = false
		default:
			return o, denyf("annotation %s=%q is not a boolean: set it to \"true\" (native sidecar, the default) or \"false\" (regular container for clusters without native sidecars)", AnnotationNativeSidecar, v)
		}
	}

	if v, ok := ann[AnnotationImage]; ok {
		if !validImage(v) {
			return o, denyf("annotation %s=%q is not an image reference: set it to an image such as ghcr.io/falguard/falguard-sidecar:v1.0.0, or remove it to use the operator's default", AnnotationImage, v)
		}
		o.image = v
	}

	if v, ok := ann[AnnotationLogLevel]; ok {
		if !contains(logLevels, v) {
			return o, denyf("annotation %s=%q is not a log level: set it to one of %s", AnnotationLogLevel, v, strings.Join(logLevels, ", "))
		}
		o.logLevel = v
	}

	var err error
	if o.proxyPort, err = portAnnotation(ann, AnnotationProxyPort, cfg.defaultProxyPort()); err != nil {
		return o, err
	}
	if o.opsPort, err = portAnnotation(ann, AnnotationOpsPort, cfg.defaultOpsPort()); err != nil {
		return o, err
	}
	if o.proxyPort == o.opsPort {
		_, setProxy := ann[AnnotationProxyPort]
		_, setOps := ann[AnnotationOpsPort]
		if setProxy && setOps {
			return o, denyf("annotations %s and %s both use port %d: give the app API and the ops listener different ports", AnnotationProxyPort, AnnotationOpsPort, o.proxyPort)
		}
		// One annotation landed on the manager's default for the other port.
		set := AnnotationProxyPort
		if setOps {
			set = AnnotationOpsPort
		}
		return o, denyf("annotation %s=%q is the port the sidecar's other listener already uses by default: choose another port, or set both %s and %s",
			set, ann[set], AnnotationProxyPort, AnnotationOpsPort)
	}

	if o.resources, err = parseResources(ann, cfg.defaultResources()); err != nil {
		return o, err
	}
	return o, nil
}

func portAnnotation(ann map[string]string, key string, def int32) (int32, error) {
	v, ok := ann[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < minPort || n > 65535 {
		return 0, denyf("annotation %s=%q is not a usable port: set it to a number from %d to 65535 (the sidecar runs without the capability to bind lower ports), or remove it for the default %d", key, v, minPort, def)
	}
	return int32(n), nil
}

// parseResources applies the resource annotations to r, the manager's
// defaults (a copy with non-nil lists, changed in place).
func parseResources(ann map[string]string, r corev1.ResourceRequirements) (corev1.ResourceRequirements, error) {
	for _, f := range []struct {
		key  string
		list corev1.ResourceList
		name corev1.ResourceName
		eg   string
	}{
		{AnnotationCPURequest, r.Requests, corev1.ResourceCPU, "50m"},
		{AnnotationCPULimit, r.Limits, corev1.ResourceCPU, "500m"},
		{AnnotationMemoryRequest, r.Requests, corev1.ResourceMemory, "32Mi"},
		{AnnotationMemoryLimit, r.Limits, corev1.ResourceMemory, "128Mi"},
	} {
		v, ok := ann[f.key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() < 0 {
			return r, denyf("annotation %s=%q is not a resource quantity: set it to a quantity such as %q, or \"0\" for none", f.key, v, f.eg)
		}
		if q.IsZero() {
			delete(f.list, f.name)
			continue
		}
		f.list[f.name] = q
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := r.Requests[name]
		lim, hasLim := r.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			return r, denyf("sidecar %s request %s is above its limit %s: raise falguard.dev/sidecar-%s-limit or lower falguard.dev/sidecar-%s-request", name, req.String(), lim.String(), name, name)
		}
	}
	// Empty lists render as `resources: {}`, as a pod that set none would.
	if len(r.Requests) == 0 {
		r.Requests = nil
	}
	if len(r.Limits) == 0 {
		r.Limits = nil
	}
	return r, nil
}

// validImage accepts what a container runtime could pull: no whitespace or
// control characters, not empty, not absurdly long. Registries do the rest.
func validImage(s string) bool {
	if s == "" || len(s) > 512 || strings.HasPrefix(s, ":") || strings.HasPrefix(s, "@") || strings.HasSuffix(s, ":") {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f || c > 0x7e {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func denyf(format string, args ...any) error {
	return &Denial{Message: fmt.Sprintf(format, args...)}
}
