package observability

import (
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// stringConsts returns the string constants declared in file whose names
// start with prefix: name -> value.
func stringConsts(t *testing.T, file, prefix string) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(gotoken.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatalf("parsing %s: %v", file, err)
	}
	out := map[string]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != gotoken.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, prefix) || i >= len(vs.Values) {
					continue
				}
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == gotoken.STRING {
					v, _ := strconv.Unquote(lit.Value)
					out[n.Name] = v
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no %s* string constants in %s", prefix, file)
	}
	return out
}

// used reports which of names the non-test Go files under dirs use other than
// in their declaration (so a constant nobody uses is not taken for a code the
// sidecar returns).
func used(t *testing.T, names map[string]string, qualifier string, dirs ...string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for name := range names {
				all := regexp.MustCompile(`\b` + regexp.QuoteMeta(qualifier+name) + `\b`)
				decl := regexp.MustCompile(`\b` + regexp.QuoteMeta(qualifier+name) + `\s*=[^=]`)
				if len(all.FindAllIndex(src, -1)) > len(decl.FindAllIndex(src, -1)) {
					out[name] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func readDoc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docs", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDocsCoverErrorCodes: every error code the sidecar can return is
// explained in docs/app-teams.md.
func TestDocsCoverErrorCodes(t *testing.T) {
	codes := stringConsts(t, root+"/sidecar/apierr/apierr.go", "Code")
	returned := used(t, codes, "apierr.", root+"/sidecar")
	doc := readDoc(t, "app-teams.md")
	var unused []string
	for name, code := range codes {
		if !returned[name] {
			unused = append(unused, code)
			continue
		}
		if !strings.Contains(doc, "| `"+code+"` |") {
			t.Errorf("docs/app-teams.md has no row for error code %s (apierr.%s) in its Errors table", code, name)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Logf("declared but never returned (not documented): %s", strings.Join(unused, ", "))
	}
}

// TestDocsCoverReasons: every condition and event reason the controller and
// the webhook use is named in docs/platform-teams.md.
func TestDocsCoverReasons(t *testing.T) {
	doc := readDoc(t, "platform-teams.md")
	for _, src := range []struct{ file, dir string }{
		{root + "/controllers/falcredential_status.go", root + "/controllers"},
		{root + "/controllers/podwebhook/reporter.go", root + "/controllers/podwebhook"},
	} {
		reasons := stringConsts(t, src.file, "Reason")
		inUse := used(t, reasons, "", src.dir)
		for name, reason := range reasons {
			if inUse[name] && !strings.Contains(doc, "`"+reason+"`") {
				t.Errorf("docs/platform-teams.md never names reason %s (%s)", reason, name)
			}
		}
	}
}

// TestDocsNameExportedMetrics: every falguard_* metric the docs mention exists.
func TestDocsNameExportedMetrics(t *testing.T) {
	exported := exportedFunc()
	re := regexp.MustCompile(`\bfalguard_[a-z_]+[a-z]`)
	for _, name := range []string{"app-teams.md", "platform-teams.md", "security.md"} {
		for _, m := range re.FindAllString(readDoc(t, name), -1) {
			if !exported(BaseName(m, exported)) {
				t.Errorf("docs/%s names metric %s, which the code does not export", name, m)
			}
		}
	}
}
