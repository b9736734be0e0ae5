package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		name string
		in   []time.Duration
		q    float64
		want float64
	}{
		{"median of odd count", ms(5, 1, 3), .5, 3},
		{"median of even count is the lower middle (nearest rank)", ms(4, 1, 3, 2), .5, 2},
		{"p99 of 100 samples is the 99th", ms(seq(100)...), .99, 99},
		{"p100 is the max", ms(7, 9, 8), 1, 9},
		{"p0 clamps to the min", ms(7, 9, 8), 0, 7},
		{"single sample", ms(42), .99, 42},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			if got := percentile(tt.in, tt.q); got != tt.want {
				t.Fatalf("percentile(%v, %v) = %v, want %v", tt.in, tt.q, got, tt.want)
			}
			if !slices.Equal(in, tt.in) {
				t.Fatalf("percentile reordered its input")
			}
		})
	}
	if got := percentile(nil, .5); !math.IsNaN(got) {
		t.Fatalf("percentile of no samples = %v, want NaN (shown as n/a)", got)
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i + 1
	}
	return out
}

func TestRotateGivesEveryPeerEveryPosition(t *testing.T) {
	peers := []string{"a", "b", "c", "d"}
	seen := map[string]map[int]bool{}
	for r := range len(peers) {
		order := rotate(peers, r)
		if len(order) != len(peers) {
			t.Fatalf("round %d: %v lost peers", r, order)
		}
		for pos, p := range order {
			if seen[p] == nil {
				seen[p] = map[int]bool{}
			}
			seen[p][pos] = true
		}
	}
	for _, p := range peers {
		if len(seen[p]) != len(peers) {
			t.Errorf("peer %s ran only in positions %v over %d rounds", p, seen[p], len(peers))
		}
	}
}

func TestJSONBodyIsValidAndExact(t *testing.T) {
	tests := []struct {
		size  int
		extra string
	}{{1024, ""}, {256, `"num_events":100,`}, {64, `"a":1,`}}
	for _, tt := range tests {
		b := jsonBody(tt.size, tt.extra)
		if len(b) != tt.size {
			t.Errorf("jsonBody(%d, %q) is %d bytes", tt.size, tt.extra, len(b))
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Errorf("jsonBody(%d, %q) is not a JSON object: %v", tt.size, tt.extra, err)
		}
	}
}

func TestStatFieldsSurvivesParensInTheName(t *testing.T) {
	// The command name may hold spaces and ')' (nginx: "nginx: worker process").
	line := []byte("1234 (odd) name)) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1")
	f := statFields(line)
	if f[0] != "S" || f[1] != "77" || f[11] != "250" || f[12] != "50" {
		t.Fatalf("statFields = %v: want state S, ppid 77, utime 250, stime 50", f)
	}
}

func TestWriteCredsSwapsAtomically(t *testing.T) {
	dir := t.TempDir()
	for gen, key := range []string{"kid1:s1", "kid2:s2"} {
		if err := writeCreds(dir, key, gen+1); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "key"))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != key {
			t.Fatalf("after writing %q the key file reads %q", key, got)
		}
		pol, err := os.ReadFile(filepath.Join(dir, "policy.json"))
		if err != nil {
			t.Fatal(err)
		}
		var p struct{ KeyID string }
		if err := json.Unmarshal(pol, &p); err != nil || p.KeyID != key[:4] {
			t.Fatalf("policy.json %s: keyID %q, want %q (err %v)", pol, p.KeyID, key[:4], err)
		}
		if target, err := os.Readlink(filepath.Join(dir, "key")); err != nil || target != filepath.Join("..data", "key") {
			t.Fatalf("key is not a symlink into ..data: %q, %v", target, err)
		}
	}
}
