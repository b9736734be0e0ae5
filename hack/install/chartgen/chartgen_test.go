package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestValueRows(t *testing.T) {
	tests := []struct {
		name    string
		values  string
		want    []Row
		wantErr string
	}{
		{
			name: "leaves, nested keys and objects without documented children",
			values: `# file header

# Replicas of the manager.
replicaCount: 2
image:
  # Repository.
  repository: ghcr.io/x
# CPU and memory,
# on two lines.
resources:
  limits:
    memory: 64Mi
`,
			want: []Row{
				{"replicaCount", "int", "2", "Replicas of the manager."},
				{"image.repository", "string", `"ghcr.io/x"`, "Repository."},
				{"resources", "object", `{"limits":{"memory":"64Mi"}}`, "CPU and memory, on two lines."},
			},
		},
		{
			name:    "undocumented leaf",
			values:  "# Documented.\na: 1\nb: true\nc:\n  # yes\n  d: x\n  e: []\n",
			wantErr: "values without a comment: b, c.e",
		},
		{
			name:    "not a mapping",
			values:  "- a\n",
			wantErr: "want a mapping",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := ValueRows([]byte(tc.values))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != len(tc.want) {
				t.Fatalf("rows = %+v, want %+v", rows, tc.want)
			}
			for i := range rows {
				if rows[i] != tc.want[i] {
					t.Errorf("row %d = %+v, want %+v", i, rows[i], tc.want[i])
				}
			}
		})
	}
}

func TestValuesTableEscapesPipes(t *testing.T) {
	out, err := ValuesTable([]byte("# Fail | Ignore.\np: Fail\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `| Fail \| Ignore. |`) {
		t.Errorf("a | in a comment must not split the table row:\n%s", out)
	}
}

func TestRBACTemplate(t *testing.T) {
	tests := []struct {
		name    string
		role    string
		want    []string
		wantErr string
	}{
		{
			name: "cluster role and namespaced role",
			role: `---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: falguard-manager-role
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: falguard-manager-role
  namespace: falguard-system
rules:
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
`,
			want: []string{
				"kind: ClusterRole\nmetadata:\n  name: {{ include \"falguard.fullname\" . }}-manager-role\n",
				"rules:\n- apiGroups:\n  - \"\"\n  resources:\n  - pods\n  verbs:\n  - get\n  - list\n",
				"kind: ClusterRoleBinding\nmetadata:\n  name: {{ include \"falguard.fullname\" . }}-manager-rolebinding\n",
				"kind: Role\nmetadata:\n  name: {{ include \"falguard.fullname\" . }}-manager-role\n  namespace: {{ .Release.Namespace }}\n",
				"kind: RoleBinding\n",
				"  - secrets\n  verbs:\n  - create\n",
				"name: {{ include \"falguard.serviceAccountName\" . }}\n",
			},
		},
		{name: "no roles", role: "---\n", wantErr: "no ClusterRole or Role"},
		{name: "other kind", role: "kind: ServiceAccount\nmetadata: {name: x}\n", wantErr: `unexpected kind "ServiceAccount"`},
		{name: "unnamed", role: "kind: ClusterRole\nrules: []\n", wantErr: "without a name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := RBACTemplate([]byte(tc.role))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("template lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestReplaceBetween(t *testing.T) {
	got, err := ReplaceBetween([]byte("a\n<!-- b -->\nold\n<!-- e -->\nz\n"), "<!-- b -->", "<!-- e -->", []byte("new\n"))
	if err != nil || string(got) != "a\n<!-- b -->\nnew\n<!-- e -->\nz\n" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := ReplaceBetween([]byte("<!-- e --> <!-- b -->"), "<!-- b -->", "<!-- e -->", nil); err == nil {
		t.Error("markers out of order accepted")
	}
}

// TestGenerateAndStale runs the whole generation on a small tree: a stale
// chart is reported file by file, Write fixes it, and a CRD removed from
// config/ is removed from the chart.
func TestGenerateAndStale(t *testing.T) {
	root := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(crdSrcDir+"/a.yaml", "kind: CustomResourceDefinition\n")
	write(chartDir+"/crds/old.yaml", "kind: CustomResourceDefinition\n")
	write(roleSrc, "kind: ClusterRole\nmetadata: {name: falguard-manager-role}\nrules: []\n")
	write(valuesPath, "# Documented.\nx: 1\n")
	write(readmePath, "# chart\n<!-- values:begin -->\n<!-- values:end -->\n")

	want, err := Generate(root)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := Stale(root, want)
	if err != nil {
		t.Fatal(err)
	}
	wantStale := []string{readmePath, chartDir + "/crds/a.yaml", chartDir + "/crds/old.yaml", rbacOut}
	slices.Sort(wantStale)
	if !slices.Equal(stale, wantStale) {
		t.Errorf("stale = %v, want %v", stale, wantStale)
	}
	if err := Write(root, want); err != nil {
		t.Fatal(err)
	}
	if stale, _ := Stale(root, want); len(stale) != 0 {
		t.Errorf("still stale after Write: %v", stale)
	}
	if _, err := os.Stat(filepath.Join(root, chartDir, "crds", "old.yaml")); !os.IsNotExist(err) {
		t.Errorf("a CRD gone from config/ is still in the chart: %v", err)
	}
	readme, _ := os.ReadFile(filepath.Join(root, readmePath))
	if !strings.Contains(string(readme), "| `x` | int | `1` | Documented. |") {
		t.Errorf("README table not written:\n%s", readme)
	}
}
