package credentials

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// AtomicDir mimics kubelet's atomic writer: files are symlinks into ..data,
// which is swapped to a fresh timestamped directory on every update.
type atomicDir struct {
	t   *testing.T
	dir string
	n   int
}

func newAtomicDir(t *testing.T, files map[string]string) *atomicDir {
	a := &atomicDir{t: t, dir: t.TempDir()}
	a.update(files)
	for name := range files {
		if err := os.Symlink(filepath.Join(DataLink, name), filepath.Join(a.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func (a *atomicDir) update(files map[string]string) {
	a.n++
	ts := fmt.Sprintf("..2026_12_04_20_00_%02d.%d", a.n, a.n)
	if err := os.Mkdir(filepath.Join(a.dir, ts), 0o755); err != nil {
		a.t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(a.dir, ts, name), []byte(content), 0o644); err != nil {
			a.t.Fatal(err)
		}
	}
	tmp := filepath.Join(a.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		a.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(a.dir, DataLink)); err != nil {
		a.t.Fatal(err)
	}
}

const (
	key1 = "kid1:s3cr3t-one-aaaaaaaaaaaaaaaa"
	key2 = "kid2:s3cr3t-two-bbbbbbbbbbbbbbbb"
	pol1 = `{"version":1,"credential":"shop/rt","allowedApps":["fal-ai/flux/*"]}`
	pol2 = `{"version":1,"credential":"shop/rt","allowedApps":["fal-ai/flux/*","fal-ai/fast-lcm-diffusion"],"rateLimit":{"requestsPerSecond":5}}`
)

func TestAtomicDirReloads(t *testing.T) {
	a := newAtomicDir(t, map[string]string{"key": key1 + "\n", "policy.json": pol1})
	var logs bytes.Buffer
	var reloads, reloadErrs atomic.Int32
	s, err := New(Options{Dir: a.dir, Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
		OnReload: func() { reloads.Add(1) }, OnReloadError: func() { reloadErrs.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	var keyChanges atomic.Int32
	s.OnChange(func(old, new *Snapshot) {
		if old == nil || old.Key() != new.Key() {
			keyChanges.Add(1)
		}
	})
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	first := s.Current()
	if first.Key() != key1 || first.KeyID != "kid1" || len(first.Policy.AllowedApps) != 1 || first.Limiter != nil {
		t.Fatalf("first load wrong: %+v", first)
	}

	for _, step := range []struct {
		name       string
		files      map[string]string
		wantKey    string
		wantApps   int
		wantErr    string
		keyChanges int32
	}{
		{"policy only", map[string]string{"key": key1, "policy.json": pol2}, key1, 2, "", 1},
		{"key rotated", map[string]string{"key": key2, "policy.json": pol2}, key2, 2, "", 2},
		{"bad policy kept last good", map[string]string{"key": key1, "policy.json": `{"version":1,"allowedApps":[]}`}, key2, 2, "allowedApps is empty", 2},
		{"bad key kept last good", map[string]string{"key": "no-colon-s3cr3t-three", "policy.json": pol1}, key2, 2, "key_id:key_secret", 2},
		{"missing policy", map[string]string{"key": key1}, key2, 2, "no policy.json", 2},
		{"recovers", map[string]string{"key": key1, "policy.json": pol1}, key1, 1, "", 3},
	} {
		a.update(step.files)
		err := s.Reload()
		if step.wantErr == "" && err != nil || step.wantErr != "" && (err == nil || !strings.Contains(err.Error(), step.wantErr)) {
			t.Fatalf("%s: err %v, want %q", step.name, err, step.wantErr)
		}
		cur := s.Current()
		if cur.Key() != step.wantKey || len(cur.Policy.AllowedApps) != step.wantApps || keyChanges.Load() != step.keyChanges {
			t.Fatalf("%s: key %s apps %d keyChanges %d", step.name, cur.KeyID, len(cur.Policy.AllowedApps), keyChanges.Load())
		}
	}
	if reloads.Load() != 4 || reloadErrs.Load() != 3 {
		t.Fatalf("reloads %d errors %d, want 4 and 3", reloads.Load(), reloadErrs.Load())
	}
	// An unchanged poll neither reloads nor logs again.
	_ = s.Reload()
	if reloads.Load() != 4 {
		t.Fatal("unchanged directory reloaded")
	}
	for _, secret := range []string{"s3cr3t-one", "s3cr3t-two", "s3cr3t-three"} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("log leaks a key secret %q:\n%s", secret, logs.String())
		}
	}
}

func TestRunPicksUpSwap(t *testing.T) {
	a := newAtomicDir(t, map[string]string{"key": key1, "policy.json": pol1})
	s, err := New(Options{Dir: a.dir, Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case <-s.Loaded():
	case <-time.After(5 * time.Second):
		t.Fatal("never loaded")
	}
	a.update(map[string]string{"key": key2, "policy.json": pol1})
	deadline := time.Now().Add(5 * time.Second)
	for s.Current().KeyID != "kid2" {
		if time.Now().After(deadline) {
			t.Fatal("swap not picked up")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStandalone(t *testing.T) {
	t.Setenv("TEST_FAL_KEY", key1)
	s, err := New(Options{KeyEnv: "TEST_FAL_KEY", AllowedApps: []string{"fal-ai/flux/*"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if s.Current().KeyID != "kid1" || s.Current().Policy.TokenTTLSeconds != 120 {
		t.Fatalf("got %+v", s.Current())
	}

	pf := filepath.Join(t.TempDir(), "p.json")
	if err := os.WriteFile(pf, []byte(pol2), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ = New(Options{KeyEnv: "TEST_FAL_KEY", PolicyFile: pf})
	if err := s.Reload(); err != nil || s.Current().Limiter == nil {
		t.Fatalf("policy file: %v", err)
	}

	t.Setenv("TEST_FAL_KEY", "")
	s, _ = New(Options{KeyEnv: "TEST_FAL_KEY", AllowedApps: []string{"fal-ai/flux/*"}})
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "TEST_FAL_KEY") {
		t.Fatalf("empty env: %v", err)
	}
}

func TestOptionErrors(t *testing.T) {
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{}, "no key source"},
		{Options{Dir: "/x", KeyEnv: "FAL_KEY"}, "mutually exclusive"},
		{Options{KeyEnv: "FAL_KEY"}, "needs a policy"},
		{Options{KeyEnv: "FAL_KEY", PolicyFile: "p", AllowedApps: []string{"a/b"}}, "mutually exclusive"},
	} {
		if _, err := New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.opts, err, tc.want)
		}
	}
	s, _ := New(Options{KeyEnv: "X", AllowedApps: []string{"flux"}})
	t.Setenv("X", key1)
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "owner/alias") {
		t.Errorf("bad --allowed-app: %v", err)
	}
}
