//go:build installtest

package installtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

const (
	release   = "falguard"
	namespace = "falguard-system"
	// commandTimeout bounds every helm and kubectl call.
	commandTimeout = 2 * time.Minute
)

var (
	root     = repoRoot()
	chartDir = filepath.Join(root, "charts", "falguard")
)

func repoRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", "..", ".."))
}

// toolPath returns the path in env var name, which `make test-install` sets.
func toolPath(t *testing.T, name string) string {
	t.Helper()
	p := os.Getenv(name)
	if p == "" {
		t.Fatalf("%s is not set: run this suite with 'make test-install'", name)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s=%s: %v (run 'make test-install')", name, p, err)
	}
	return p
}

// run executes a command with a bounded time and returns stdout and stderr.
func run(t *testing.T, env []string, name string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: timed out after %v", filepath.Base(name), strings.Join(args, " "), commandTimeout)
	}
	return stdout.String(), stderr.String(), err
}

// helmEnv keeps helm's cache, config and data out of the user's home.
func helmEnv(t *testing.T, kubeconfig string) []string {
	dir := t.TempDir()
	env := []string{
		"HELM_CACHE_HOME=" + filepath.Join(dir, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(dir, "config"),
		"HELM_DATA_HOME=" + filepath.Join(dir, "data"),
	}
	if kubeconfig != "" {
		env = append(env, "KUBECONFIG="+kubeconfig)
	}
	return env
}

// helm runs helm and fails the test when it fails.
func helm(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	out, errOut, err := run(t, helmEnv(t, kubeconfig), toolPath(t, "HELM"), args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// render runs `helm template` for release "falguard" in falguard-system.
func render(t *testing.T, args ...string) objects {
	t.Helper()
	out := helm(t, "", append([]string{"template", release, chartDir, "--namespace", namespace}, args...)...)
	objs, err := parseYAML([]byte(out))
	if err != nil {
		t.Fatalf("helm template output does not parse: %v", err)
	}
	return objs
}

type objects []*unstructured.Unstructured

func parseYAML(data []byte) (objects, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out objects
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if m == nil {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

func (o objects) ofKind(kind string) objects {
	var out objects
	for _, u := range o {
		if u.GetKind() == kind {
			out = append(out, u)
		}
	}
	return out
}

func (o objects) find(kind, name string) *unstructured.Unstructured {
	for _, u := range o {
		if u.GetKind() == kind && u.GetName() == name {
			return u
		}
	}
	return nil
}

// one returns the single object of kind, failing the test otherwise.
func (o objects) one(t *testing.T, kind string) *unstructured.Unstructured {
	t.Helper()
	all := o.ofKind(kind)
	if len(all) != 1 {
		t.Fatalf("want exactly one %s, found %d", kind, len(all))
	}
	return all[0]
}

// keys lists "Kind/namespace/name" of every object.
func (o objects) keys() []string {
	var out []string
	for _, u := range o {
		out = append(out, key(u))
	}
	return out
}

func key(u *unstructured.Unstructured) string {
	return u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
}

// as converts an unstructured object into a typed one.
func as[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	if u == nil {
		t.Fatalf("object is missing")
	}
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		t.Fatalf("converting %s: %v", key(u), err)
	}
	return out
}
