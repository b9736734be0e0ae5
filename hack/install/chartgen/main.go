// Command chartgen keeps charts/falguard in step with the rest of the repo:
//
//   - charts/falguard/crds/ is a copy of config/crd/bases (generated from api/);
//   - charts/falguard/templates/manager-rbac.yaml holds the manager's RBAC rules
//     taken from config/rbac/role.yaml (generated from +kubebuilder:rbac markers);
//   - the values table in charts/falguard/README.md is rendered from the
//     comments in values.yaml.
//
// `chartgen` rewrites them; `chartgen -check` changes nothing and exits 1 naming
// every stale file, so `make test` catches drift.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	root := flag.String("root", ".", "repository root")
	check := flag.Bool("check", false, "report stale files instead of writing them")
	flag.Parse()

	want, err := Generate(*root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chartgen:", err)
		os.Exit(1)
	}
	stale, err := Stale(*root, want)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chartgen:", err)
		os.Exit(1)
	}
	if *check {
		if len(stale) > 0 {
			fmt.Fprintf(os.Stderr, "chartgen: the chart is out of step with config/ or values.yaml: %s\nrun 'make chart-sync' and commit the result\n", strings.Join(stale, ", "))
			os.Exit(1)
		}
		return
	}
	if err := Write(*root, want); err != nil {
		fmt.Fprintln(os.Stderr, "chartgen:", err)
		os.Exit(1)
	}
	for _, p := range stale {
		fmt.Println("updated", p)
	}
}

// Files maps a path relative to the repo root to its wanted content; a nil
// content means the file must not exist.
type Files map[string][]byte

const (
	chartDir   = "charts/falguard"
	crdSrcDir  = "config/crd/bases"
	roleSrc    = "config/rbac/role.yaml"
	rbacOut    = chartDir + "/templates/manager-rbac.yaml"
	readmePath = chartDir + "/README.md"
	valuesPath = chartDir + "/values.yaml"
)

// Generate computes every generated chart file from the sources under root.
func Generate(root string) (Files, error) {
	out := Files{}

	crds, err := filepath.Glob(filepath.Join(root, crdSrcDir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(crds) == 0 {
		return nil, fmt.Errorf("no CRDs in %s: run 'make manifests'", crdSrcDir)
	}
	for _, src := range crds {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("reading CRD: %w", err)
		}
		out[filepath.Join(chartDir, "crds", filepath.Base(src))] = b
	}
	// CRDs removed from config/ must go from the chart too.
	existing, _ := filepath.Glob(filepath.Join(root, chartDir, "crds", "*.yaml"))
	for _, p := range existing {
		rel := filepath.Join(chartDir, "crds", filepath.Base(p))
		if _, ok := out[rel]; !ok {
			out[rel] = nil
		}
	}

	role, err := os.ReadFile(filepath.Join(root, roleSrc))
	if err != nil {
		return nil, fmt.Errorf("reading the generated manager role (run 'make manifests'): %w", err)
	}
	rbac, err := RBACTemplate(role)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", roleSrc, err)
	}
	out[rbacOut] = rbac

	values, err := os.ReadFile(filepath.Join(root, valuesPath))
	if err != nil {
		return nil, err
	}
	table, err := ValuesTable(values)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", valuesPath, err)
	}
	readme, err := os.ReadFile(filepath.Join(root, readmePath))
	if err != nil {
		return nil, err
	}
	newReadme, err := ReplaceBetween(readme, "<!-- values:begin -->", "<!-- values:end -->", table)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", readmePath, err)
	}
	out[readmePath] = newReadme
	return out, nil
}

// Stale lists (sorted) the files whose content on disk differs from want.
func Stale(root string, want Files) ([]string, error) {
	var stale []string
	for rel, content := range want {
		have, err := os.ReadFile(filepath.Join(root, rel))
		switch {
		case os.IsNotExist(err):
			if content != nil {
				stale = append(stale, rel)
			}
		case err != nil:
			return nil, err
		case content == nil || !bytes.Equal(have, content):
			stale = append(stale, rel)
		}
	}
	sort.Strings(stale)
	return stale, nil
}

// Write brings the files on disk to want.
func Write(root string, want Files) error {
	for rel, content := range want {
		p := filepath.Join(root, rel)
		if content == nil {
			if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
				return err
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, content, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ReplaceBetween swaps what lies between the begin and end marker lines.
func ReplaceBetween(doc []byte, begin, end string, body []byte) ([]byte, error) {
	s := string(doc)
	i := strings.Index(s, begin)
	j := strings.Index(s, end)
	if i < 0 || j < 0 || j < i {
		return nil, fmt.Errorf("want the markers %q and %q, in that order, around the generated part", begin, end)
	}
	var b strings.Builder
	b.WriteString(s[:i+len(begin)])
	b.WriteString("\n")
	b.Write(body)
	b.WriteString(s[j:])
	return []byte(b.String()), nil
}
