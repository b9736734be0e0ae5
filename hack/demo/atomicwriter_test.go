package demo

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func payload(kv ...string) map[string]FileProjection {
	out := map[string]FileProjection{}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i]] = FileProjection{Data: []byte(kv[i+1]), Mode: 0o644}
	}
	return out
}

// entries lists dir's top-level names, with ..<timestamp> dirs shown as "..ts".
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range des {
		n := d.Name()
		if strings.HasPrefix(n, "..") && n != dataDirName {
			n = "..ts"
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func TestAtomicWriterLayout(t *testing.T) {
	tests := []struct {
		name        string
		writes      []map[string]FileProjection
		wantChanged []bool
		wantEntries []string
		wantFiles   map[string]string
	}{
		{
			name:        "first write creates kubelet's layout",
			writes:      []map[string]FileProjection{payload("key", "k1", "policy.json", "{}")},
			wantChanged: []bool{true},
			wantEntries: []string{"..data", "..ts", "key", "policy.json"},
			wantFiles:   map[string]string{"key": "k1", "policy.json": "{}"},
		},
		{
			name:        "an update swaps ..data and leaves one timestamped dir",
			writes:      []map[string]FileProjection{payload("key", "k1", "policy.json", "{}"), payload("key", "k2", "policy.json", `{"v":2}`)},
			wantChanged: []bool{true, true},
			wantEntries: []string{"..data", "..ts", "key", "policy.json"},
			wantFiles:   map[string]string{"key": "k2", "policy.json": `{"v":2}`},
		},
		{
			name:        "an identical payload changes nothing",
			writes:      []map[string]FileProjection{payload("key", "k1"), payload("key", "k1")},
			wantChanged: []bool{true, false},
			wantEntries: []string{"..data", "..ts", "key"},
			wantFiles:   map[string]string{"key": "k1"},
		},
		{
			name:        "a key removed from the Secret disappears from the volume",
			writes:      []map[string]FileProjection{payload("key", "k1", "old", "x"), payload("key", "k1")},
			wantChanged: []bool{true, true},
			wantEntries: []string{"..data", "..ts", "key"},
			wantFiles:   map[string]string{"key": "k1"},
		},
		{
			name:        "a mode change alone is a change",
			writes:      []map[string]FileProjection{payload("key", "k1"), {"key": {Data: []byte("k1"), Mode: 0o400}}},
			wantChanged: []bool{true, true},
			wantEntries: []string{"..data", "..ts", "key"},
			wantFiles:   map[string]string{"key": "k1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "vol")
			w := AtomicWriter{Dir: dir}
			for i, p := range tt.writes {
				changed, err := w.Write(p)
				if err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				if changed != tt.wantChanged[i] {
					t.Errorf("write %d: changed = %v, want %v", i, changed, tt.wantChanged[i])
				}
			}
			if got := entries(t, dir); strings.Join(got, ",") != strings.Join(tt.wantEntries, ",") {
				t.Errorf("entries = %v, want %v", got, tt.wantEntries)
			}
			for name, want := range tt.wantFiles {
				link, err := os.Readlink(filepath.Join(dir, name))
				if err != nil || link != filepath.Join(dataDirName, name) {
					t.Errorf("%s is not a symlink to ..data/%s (readlink %q, %v)", name, name, link, err)
				}
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil || string(b) != want {
					t.Errorf("%s = %q, %v; want %q", name, b, err, want)
				}
			}
			last := tt.writes[len(tt.writes)-1]
			st, err := os.Stat(filepath.Join(dir, "key"))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != last["key"].Mode {
				t.Errorf("key mode = %v, want %v", st.Mode().Perm(), last["key"].Mode)
			}
		})
	}
}

func TestAtomicWriterRefusesBadPaths(t *testing.T) {
	for _, p := range []string{"", "/abs", "..data", "a/../b", "a//b", "./a"} {
		t.Run(p, func(t *testing.T) {
			if _, err := (AtomicWriter{Dir: t.TempDir()}).Write(payload(p, "x")); err == nil {
				t.Errorf("path %q was accepted", p)
			}
		})
	}
}

// A reader that opens key and policy.json through ..data, as the sidecar does,
// must only ever see a consistent pair, however often the volume is rewritten.
func TestAtomicWriterReadersSeeConsistentPairs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	w := AtomicWriter{Dir: dir}
	if _, err := w.Write(payload("key", "v0", "policy.json", "v0")); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var torn, reads atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				// Resolve ..data once, then read both files from that snapshot.
				ts, err := os.Readlink(filepath.Join(dir, dataDirName))
				if err != nil {
					torn.Add(1)
					continue
				}
				k, err1 := os.ReadFile(filepath.Join(dir, ts, "key"))
				p, err2 := os.ReadFile(filepath.Join(dir, ts, "policy.json"))
				if err1 != nil || err2 != nil {
					continue // the writer removed that snapshot after we resolved it: a retry, not a tear
				}
				reads.Add(1)
				if !bytes.Equal(k, p) {
					torn.Add(1)
				}
			}
		}()
	}
	for i := 1; i <= 200; i++ {
		v := "v" + string(rune('0'+i%10)) + strings.Repeat("x", i)
		if _, err := w.Write(payload("key", v, "policy.json", v)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if torn.Load() != 0 {
		t.Errorf("%d reads saw a key and policy from different writes (or no ..data)", torn.Load())
	}
	if reads.Load() == 0 {
		t.Error("no reads completed")
	}
}
