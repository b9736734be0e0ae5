package podwebhook

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/falguard/falguard/internal/inject"
)

func TestResourceFlags(t *testing.T) {
	q := resource.MustParse
	builtIn := ResourceFlags{CPURequest: inject.DefaultCPURequest, MemoryRequest: inject.DefaultMemoryRequest, MemoryLimit: inject.DefaultMemoryLimit}
	for _, tc := range []struct {
		name  string
		flags ResourceFlags
		want  corev1.ResourceRequirements
		err   string
	}{
		{name: "the flags' defaults are the built-in resources", flags: builtIn, want: inject.DefaultResources()},
		{name: "all set",
			flags: ResourceFlags{CPURequest: "50m", CPULimit: "1", MemoryRequest: "32Mi", MemoryLimit: "128Mi"},
			want: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: q("50m"), corev1.ResourceMemory: q("32Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: q("1"), corev1.ResourceMemory: q("128Mi")},
			}},
		{name: `"0" and empty mean none`,
			flags: ResourceFlags{CPURequest: "0", CPULimit: "", MemoryRequest: " ", MemoryLimit: "0"},
			want:  corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}},
		{name: "not a quantity", flags: ResourceFlags{CPULimit: "lots"}, err: `--sidecar-cpu-limit="lots" is not a resource quantity`},
		{name: "negative", flags: ResourceFlags{MemoryRequest: "-1Mi"}, err: `--sidecar-memory-request="-1Mi" is not a resource quantity`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.flags.Resources()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(*got, tc.want) {
				t.Fatalf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
}

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		v    int
		want int32
		err  bool
	}{
		{v: 4750, want: 4750},
		{v: 1024, want: 1024},
		{v: 65535, want: 65535},
		{v: 1023, err: true},
		{v: 0, err: true},
		{v: 65536, err: true},
		{v: 1<<32 + 4750, err: true}, // would wrap to 4750 as an int32
	} {
		got, err := ParsePort("sidecar-proxy-port", tc.v)
		if tc.err {
			if err == nil || !strings.Contains(err.Error(), "--sidecar-proxy-port=") {
				t.Errorf("ParsePort(%d) = %d, %v; want an error naming the flag", tc.v, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePort(%d) = %d, %v; want %d", tc.v, got, err, tc.want)
		}
	}
}
