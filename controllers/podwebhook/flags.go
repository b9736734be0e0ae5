package podwebhook

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
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
