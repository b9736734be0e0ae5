package podwebhook

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// EnvFlag collects repeatable --sidecar-env NAME=VALUE flags.
type EnvFlag []corev1.EnvVar

func (e *EnvFlag) String() string {
	names := make([]string, 0, len(*e))
	for _, v := range *e {
		names = append(names, v.Name) // values may be sensitive (proxy credentials)
	}
	return strings.Join(names, ",")
}

// Set implements flag.Value.
func (e *EnvFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("want NAME=VALUE, got %q", name)
	}
	if errs := validation.IsEnvVarName(name); len(errs) > 0 {
		return fmt.Errorf("%q is not an environment variable name: %s", name, strings.Join(errs, "; "))
	}
	for i := range *e {
		if (*e)[i].Name == name {
			(*e)[i].Value = value
			return nil
		}
	}
	*e = append(*e, corev1.EnvVar{Name: name, Value: value})
	return nil
}

// ParsePullPolicy validates --sidecar-image-pull-policy ("" leaves the
// cluster's default).
func ParsePullPolicy(s string) (corev1.PullPolicy, error) {
	switch p := corev1.PullPolicy(s); p {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
		return p, nil
	}
	return "", fmt.Errorf("--sidecar-image-pull-policy=%q: want Always, IfNotPresent or Never", s)
}

// SplitHosts parses --webhook-cert-hosts.
func SplitHosts(s string) []string {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// ResourceFlags are the --sidecar-{cpu,memory}-{request,limit} values, with
// the annotations' meaning: a quantity, or "0" (or empty) for none.
type ResourceFlags struct {
	CPURequest, CPULimit, MemoryRequest, MemoryLimit string
}

// Resources parses the flags into the sidecar's default resources. Whether a
// request fits under its limit is inject.Config.Validate's check.
func (f ResourceFlags) Resources() (*corev1.ResourceRequirements, error) {
	r := &corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, v := range []struct {
		flag, value string
		list        corev1.ResourceList
		name        corev1.ResourceName
		eg          string
	}{
		{"--sidecar-cpu-request", f.CPURequest, r.Requests, corev1.ResourceCPU, "50m"},
		{"--sidecar-cpu-limit", f.CPULimit, r.Limits, corev1.ResourceCPU, "500m"},
		{"--sidecar-memory-request", f.MemoryRequest, r.Requests, corev1.ResourceMemory, "32Mi"},
		{"--sidecar-memory-limit", f.MemoryLimit, r.Limits, corev1.ResourceMemory, "128Mi"},
	} {
		if strings.TrimSpace(v.value) == "" {
			continue
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(v.value))
		if err != nil || q.Sign() < 0 {
			return nil, fmt.Errorf("%s=%q is not a resource quantity: set a quantity such as %q, or \"0\" for none", v.flag, v.value, v.eg)
		}
		if !q.IsZero() {
			v.list[v.name] = q
		}
	}
	return r, nil
}

// ParsePort checks a --sidecar-*-port value before it is narrowed to int32,
// where an out-of-range number could wrap into a valid-looking port.
func ParsePort(flagName string, v int) (int32, error) {
	if v < 1024 || v > 65535 {
		return 0, fmt.Errorf("--%s=%d is not a usable port: set a number from 1024 to 65535 (the sidecar runs without the capability to bind lower ports)", flagName, v)
	}
	return int32(v), nil
}
