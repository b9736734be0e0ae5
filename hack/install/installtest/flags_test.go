//go:build installtest

package installtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// zapFlags are registered by controller-runtime's zap.Options.BindFlags.
var zapFlags = []string{"zap-devel", "zap-encoder", "zap-log-level", "zap-stacktrace-level", "zap-time-encoding"}

// managerFlags reads the flag names the manager defines from the Go source of
// the root package (it need not compile, so this works while others edit it).
func managerFlags(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatalf("parsing %s: %v", f, err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if sel.Sel.Name == "BindFlags" {
				for _, z := range zapFlags {
					flags[z] = true
				}
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "flag" {
				return true
			}
			// flag.String("name", ...) or flag.StringVar(&v, "name", ...) / flag.Var(v, "name", ...)
			idx := 0
			if strings.HasSuffix(sel.Sel.Name, "Var") {
				idx = 1
			}
			if idx < len(call.Args) {
				if lit, ok := call.Args[idx].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if name, err := strconv.Unquote(lit.Value); err == nil {
						flags[name] = true
					}
				}
			}
			return true
		})
	}
	if !flags["leader-elect"] || !flags["sidecar-image"] {
		t.Fatalf("found only flags %v in the manager's source: has main.go moved its flags?", flags)
	}
	return flags
}

// TestManagerFlagsExist: every flag the chart (with every toggle) or
// install.yaml passes to the manager is one it defines; an unknown flag makes
// the manager exit at start, which no render-time check would notice.
func TestManagerFlagsExist(t *testing.T) {
	known := managerFlags(t)
	for name, objs := range map[string]objects{
		"chart defaults":     render(t),
		"chart, all toggles": render(t, allToggles...),
		"install.yaml":       installYAML(t),
	} {
		d := as[appsv1.Deployment](t, objs.one(t, "Deployment"))
		for _, a := range d.Spec.Template.Spec.Containers[0].Args {
			flagName := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-")
			if !known[flagName] {
				t.Errorf("%s passes %q, but the manager has no flag --%s", name, a, flagName)
			}
		}
	}
}
