package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/falguard/falguard/hack/fakefal"
)

// TestNoKubernetesDependencies keeps the sidecar small: nothing from
// k8s.io, controller-runtime or the operator's own packages.
func TestNoKubernetesDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"k8s.io/", "sigs.k8s.io/", "github.com/falguard/falguard/api", "github.com/falguard/falguard/controllers", "github.com/falguard/falguard/hack"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("the sidecar depends on %s", dep)
			}
		}
	}
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"version"}, func(string) string { return "" }, &out, io.Discard); code != 0 || out.String() != version+"\n" {
		t.Fatalf("exit %d, %q", code, out.String())
	}
}

func TestRefusesNonLoopbackListen(t *testing.T) {
	var errOut bytes.Buffer
	code := run(context.Background(), []string{"--listen", "0.0.0.0:0", "--key-env", "K", "--allowed-app", "a/b"}, func(string) string { return "" }, io.Discard, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "--allow-non-loopback") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if code := run(context.Background(), []string{"bogus"}, func(string) string { return "" }, io.Discard, io.Discard); code != 2 {
		t.Fatalf("unknown command: exit %d", code)
	}
	var waitErr bytes.Buffer
	if code := run(context.Background(), []string{"wait", "--ops-listen", freePort(t), "--timeout", "300ms"}, func(string) string { return "" }, io.Discard, &waitErr); code != 1 || !strings.Contains(waitErr.String(), "not ready") {
		t.Fatalf("wait with nothing listening: exit %d %s", code, waitErr.String())
	}
}

// TestStandaloneFromEnv runs the command configured only through FALGUARD_*
// env vars (as the webhook and the demo do), against fakefal, and drives it
// with the wait and shutdown subcommands.
func TestStandaloneFromEnv(t *testing.T) {
	fal, err := fakefal.Start(fakefal.Options{Keys: []string{"kid:standalone-secret-value"}})
	if err != nil {
		t.Fatal(err)
	}
	defer fal.Close()
	listen, opsListen := freePort(t), freePort(t)
	env := map[string]string{
		"FAL_KEY":                     "kid:standalone-secret-value",
		"FALGUARD_KEY_ENV":            "FAL_KEY",
		"FALGUARD_ALLOWED_APP":        "fal-ai/flux/*,fal-ai/fast-lcm-diffusion",
		"FALGUARD_LISTEN":             listen,
		"FALGUARD_OPS_LISTEN":         opsListen,
		"FALGUARD_UPSTREAM_OVERRIDE":  strings.Join(fal.Overrides(), ","),
		"FALGUARD_UPSTREAM_CA_FILE":   fal.CAFile(),
		"FALGUARD_MIN_SHUTDOWN_DELAY": "5s", // skipped by an explicit shutdown
		"FALGUARD_LOG_LEVEL":          "debug",
	}
	getenv := func(k string) string { return env[k] }
	logs := &lockedBuf{}
	done := make(chan int, 1)
	go func() { done <- run(context.Background(), nil, getenv, io.Discard, logs) }()

	if code := run(context.Background(), []string{"wait", "--timeout", "10s"}, getenv, io.Discard, io.Discard); code != 0 {
		t.Fatalf("wait: exit %d\n%s", code, logs.String())
	}
	req, _ := http.NewRequest("POST", "http://"+listen+"/api/fal/proxy", strings.NewReader(`{"prompt":"x"}`))
	req.Header.Set("x-fal-target-url", "https://fal.run/fal-ai/flux/dev")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("proxy: %d", resp.StatusCode)
	}
	if code := run(context.Background(), []string{"shutdown"}, getenv, io.Discard, io.Discard); code != 0 {
		t.Fatalf("shutdown: exit %d", code)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("run exited %d\n%s", code, logs.String())
		}
	case <-time.After(4 * time.Second):
		t.Fatal("run did not stop after shutdown")
	}
	if strings.Contains(logs.String(), "standalone-secret-value") {
		t.Fatalf("logs leak the key:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"msg":"credentials loaded"`) {
		t.Fatalf("logs are not JSON by default:\n%s", logs.String())
	}
}

// TestBinarySIGTERM builds the real binary (version stamped with -ldflags)
// and checks the process contract: SIGTERM makes readiness fail at once, an
// open realtime relay is closed with 1001 by the end of the drain, and the
// process exits 0.
func TestBinarySIGTERM(t *testing.T) {
	bin := t.TempDir() + "/falguard-sidecar"
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v9.9.9-test", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || string(out) != "v9.9.9-test\n" {
		t.Fatalf("version: %q %v", out, err)
	}
	fal, err := fakefal.Start(fakefal.Options{Keys: []string{"kid:binary-secret-value"}})
	if err != nil {
		t.Fatal(err)
	}
	defer fal.Close()
	listen, opsListen := freePort(t), freePort(t)
	cmd := exec.Command(bin, "run", "--key-env", "FAL_KEY", "--allowed-app", "fal-ai/fast-lcm-diffusion",
		"--listen", listen, "--ops-listen", opsListen, "--min-shutdown-delay", "200ms", "--max-shutdown-delay", "500ms")
	cmd.Env = append(os.Environ(), "FAL_KEY=kid:binary-secret-value",
		"FALGUARD_UPSTREAM_OVERRIDE="+strings.Join(fal.Overrides(), ","), "FALGUARD_UPSTREAM_CA_FILE="+fal.CAFile())
	logs := &lockedBuf{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()

	if code := run(context.Background(), []string{"wait", "--ops-listen", opsListen, "--timeout", "10s"}, func(string) string { return "" }, io.Discard, io.Discard); code != 0 {
		t.Fatalf("never ready:\n%s", logs.String())
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+listen+"/realtime/fal-ai/fast-lcm-diffusion", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + opsListen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("readyz did not turn 503 after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("open relay ended with %v, want close 1001", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("process did not exit after SIGTERM")
	}
	if strings.Contains(logs.String(), "binary-secret-value") {
		t.Fatalf("logs leak the key:\n%s", logs.String())
	}
}
