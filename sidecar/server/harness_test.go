package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/falguard/falguard/hack/fakefal"
	"github.com/falguard/falguard/sidecar/credentials/credtest"
	"github.com/falguard/falguard/sidecar/relay"
	"github.com/falguard/falguard/sidecar/server"
	"github.com/falguard/falguard/sidecar/tokencache"
)

const (
	key1    = "kid1:sec-one-0123456789abcdef0123456789"
	key2    = "kid2:sec-two-fedcba9876543210fedcba9876"
	secret1 = "sec-one-0123456789abcdef0123456789"
	secret2 = "sec-two-fedcba9876543210fedcba9876"
)

func init() {
	// Keep failure backoffs and close waits short so tests stay fast.
	tokencache.BaseBackoff = 20 * time.Millisecond
	relay.CloseGrace = 500 * time.Millisecond
}

// syncBuffer collects logs from concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harness struct {
	t      *testing.T
	fal    *fakefal.Server
	srv    *server.Server
	base   string // http://127.0.0.1:port
	ops    string // http://127.0.0.1:port
	dir    string
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

type opt func(*server.Config)

func withPolicy(p string) func(*harnessOpts) { return func(o *harnessOpts) { o.policy = p } }

type harnessOpts struct {
	policy    string
	overrides []string // replace fakefal's
	cfg       []opt
}

const defaultPolicy = `{"version":1,"credential":"shop/rt","allowedApps":["fal-ai/flux/*","fal-ai/fast-lcm-diffusion","fal-ai/echo"],"cors":{"allowedOrigins":["https://app.example.com"]}}`

// start runs fakefal (keys kid1 and kid2) and a sidecar against it.
func start(t *testing.T, opts ...func(*harnessOpts)) *harness {
	t.Helper()
	o := &harnessOpts{policy: defaultPolicy}
	for _, f := range opts {
		f(o)
	}
	fal, err := fakefal.Start(fakefal.Options{Keys: []string{key1, key2}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fal.Close)
	h := &harness{t: t, fal: fal, dir: t.TempDir(), logs: &syncBuffer{}, done: make(chan error, 1)}
	if err := credtest.Write(h.dir, map[string]string{"key": key1 + "\n", "policy.json": o.policy}); err != nil {
		t.Fatal(err)
	}
	overrides := fal.Overrides()
	if o.overrides != nil {
		overrides = append(overrides, o.overrides...)
	}
	cfg := server.Config{
		Listen: "127.0.0.1:0", OpsListen: "127.0.0.1:0", CredentialsDir: h.dir,
		UpstreamOverride: overrides, UpstreamCAFile: fal.CAFile(),
		MinShutdownDelay: 0, MaxShutdownDelay: 2 * time.Second, MaxConnections: 1024,
		Version: "test", ReloadInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range o.cfg {
		f(&cfg)
	}
	h.srv, err = server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.base = "http://" + h.srv.AppAddr()
	h.ops = "http://" + h.srv.OpsAddr()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.srv.Run(ctx) }()
	t.Cleanup(h.stop)
	h.eventually("startupz", func() bool { return h.status(h.ops+"/startupz") == 200 })
	return h
}

func withCfg(f opt) func(*harnessOpts) {
	return func(o *harnessOpts) { o.cfg = append(o.cfg, f) }
}

func (h *harness) stop() {
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		h.t.Error("sidecar did not stop within 15s")
	}
	h.checkNoLeak()
}

// checkNoLeak fails if any log line carries a key secret.
func (h *harness) checkNoLeak() {
	logs := h.logs.String()
	for _, s := range []string{secret1, secret2} {
		if strings.Contains(logs, s) {
			h.t.Errorf("logs contain a key secret:\n%s", logs)
		}
	}
}

func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) status(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

var client = &http.Client{Timeout: 20 * time.Second}

// proxy sends one request through /api/fal/proxy.
func (h *harness) proxy(method, target, body string, hdr map[string]string) (*http.Response, []byte) {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.base+"/api/fal/proxy", rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if target != "" {
		req.Header.Set("x-fal-target-url", target)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp, b
}

// apiError decodes the sidecar's {message, code}.
func apiError(t *testing.T, b []byte) (msg, code string) {
	t.Helper()
	var e struct{ Message, Code string }
	if err := json.Unmarshal(b, &e); err != nil || e.Message == "" || e.Code == "" {
		t.Fatalf("not a {message, code} error body: %s", b)
	}
	return e.Message, e.Code
}

func (h *harness) metrics() string {
	resp, err := http.Get(h.ops + "/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metric returns the value of one exposition line starting with prefix.
func (h *harness) metric(prefix string) float64 {
	for _, l := range strings.Split(h.metrics(), "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			var v float64
			fmt.Sscanf(strings.TrimPrefix(l, prefix+" "), "%g", &v)
			return v
		}
	}
	return 0
}

func (h *harness) writeCreds(key, policy string) {
	h.t.Helper()
	if err := credtest.Write(h.dir, map[string]string{"key": key, "policy.json": policy}); err != nil {
		h.t.Fatal(err)
	}
}

// goroutines waits until the count is back to at most n, reporting the final count.
func goroutinesSettle(n int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		g := runtime.NumGoroutine()
		if g <= n || time.Now().After(deadline) {
			return g
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writePEM(t *testing.T, path string, der []byte) {
	t.Helper()
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkGoroutines fails when goroutines started during the test outlive it
// (after a bounded wait). Idle keep-alive connections to fal are allowed:
// two goroutines each, a handful at most.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	const slack = 6
	if g := goroutinesSettle(before + slack); g > before+slack {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines %d -> %d:\n%s", before, g, buf[:runtime.Stack(buf, true)])
	}
}
