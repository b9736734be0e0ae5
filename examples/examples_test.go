//go:build examples

// Package examples runs every example in this directory against the real
// falguard-sidecar binary and fakefal (the local stand-in for fal), so the
// examples the docs point at cannot rot. Run it with `make test-docs`, which
// installs the Node example's pinned dependencies first, or:
//
//	(cd examples/node && npm ci) && go test -tags examples -count=1 ./examples/
//
// An example whose interpreter is missing (bash+curl, python3, node) is
// skipped with a message, never failed.
package examples

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/falguard/falguard/hack/fakefal"
)

const (
	keyID     = "examples-key"
	keySecret = "examples-secret-0123456789abcdef"
	falKey    = keyID + ":" + keySecret
)

// env is what the falguard webhook gives an app container, plus PATH/HOME
// so interpreters start. Never a fal key.
type env struct {
	proxyURL, tokenURL, realtimeURL string
}

func (e env) list(extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"FAL_PROXY_URL=" + e.proxyURL,
		"FAL_TOKEN_URL=" + e.tokenURL,
		"FAL_REALTIME_URL=" + e.realtimeURL,
	}, extra...)
}

var (
	fal *fakefal.Server
	app env
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "examples:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// setup builds the sidecar, starts fakefal and the sidecar as a standalone
// process (the same binary the webhook injects, with the policy from flags).
func setup(m *testing.M) (int, error) {
	tmp, err := os.MkdirTemp("", "falguard-examples-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "falguard-sidecar")
	build := exec.Command("go", "build", "-o", bin, "./sidecar/cmd/falguard-sidecar")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("building the sidecar: %w\n%s", err, out)
	}

	fal, err = fakefal.Start(fakefal.Options{Keys: []string{falKey}})
	if err != nil {
		return 0, fmt.Errorf("starting fakefal: %w", err)
	}
	defer fal.Close()

	args := []string{"run", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--key-env", "FAL_KEY",
		"--allowed-app", "fal-ai/flux/*", "--allowed-app", "fal-ai/fast-lcm-diffusion",
		"--upstream-ca-file", fal.CAFile(), "--min-shutdown-delay", "0s", "--max-shutdown-delay", "5s"}
	for _, o := range fal.Overrides() {
		args = append(args, "--upstream-override", o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sc := exec.CommandContext(ctx, bin, args...)
	sc.Env = []string{"FAL_KEY=" + falKey}
	sc.Cancel = func() error { return sc.Process.Signal(os.Interrupt) }
	sc.WaitDelay = 10 * time.Second
	stderr, err := sc.StderrPipe()
	if err != nil {
		return 0, err
	}
	if err := sc.Start(); err != nil {
		return 0, fmt.Errorf("starting the sidecar: %w", err)
	}
	defer func() { cancel(); _ = sc.Wait() }()

	listen, ops, err := waitServing(stderr, 30*time.Second)
	if err != nil {
		return 0, err
	}
	if err := waitReady("http://"+ops+"/readyz", 30*time.Second); err != nil {
		return 0, err
	}
	app = env{
		proxyURL:    "http://" + listen + "/api/fal/proxy",
		tokenURL:    "http://" + listen + "/api/fal/token",
		realtimeURL: "ws://" + listen + "/realtime",
	}
	return m.Run(), nil
}

// waitServing reads the sidecar's JSON log until it says where it listens,
// then keeps draining it so the pipe never blocks the process.
func waitServing(r io.Reader, timeout time.Duration) (listen, ops string, err error) {
	type addrs struct{ listen, ops string }
	found := make(chan addrs, 1)
	var mu sync.Mutex
	var log strings.Builder
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			mu.Lock()
			log.WriteString(sc.Text() + "\n")
			mu.Unlock()
			var line struct {
				Msg       string `json:"msg"`
				Listen    string `json:"listen"`
				OpsListen string `json:"opsListen"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "falguard-sidecar serving" {
				found <- addrs{line.Listen, line.OpsListen}
			}
		}
	}()
	select {
	case a := <-found:
		return a.listen, a.ops, nil
	case <-time.After(timeout):
		mu.Lock()
		defer mu.Unlock()
		return "", "", fmt.Errorf("the sidecar did not start serving within %s; its log:\n%s", timeout, log.String())
	}
}

func waitReady(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s", url, timeout)
}

// need skips the test when a program an example needs is missing.
func need(t *testing.T, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("skipping: %s is not installed (this example needs %s)", p, strings.Join(programs, ", "))
		}
	}
}

func needNodeModules(t *testing.T) {
	t.Helper()
	need(t, "node")
	if _, err := os.Stat("node/node_modules/@fal-ai/client/package.json"); err != nil {
		t.Skip("skipping: examples/node has no node_modules; run `make test-docs` (it runs npm ci there) or `cd examples/node && npm ci`")
	}
}

// runExample runs one example to completion (bounded) and returns its output.
func runExample(t *testing.T, dir string, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = app.list()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := out.String()
	if strings.Contains(text, keySecret) {
		t.Fatalf("%s printed the key's secret half", argv)
	}
	if err != nil {
		t.Fatalf("%s failed: %v\n%s", argv, err, text)
	}
	return text
}

// jsonLines decodes the lines of out that are JSON objects.
func jsonLines(out string) []map[string]any {
	var lines []map[string]any
	for _, l := range strings.Split(out, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(strings.TrimSpace(l)), &m) == nil {
			lines = append(lines, m)
		}
	}
	return lines
}

func event(t *testing.T, lines []map[string]any, name string) map[string]any {
	t.Helper()
	for _, l := range lines {
		if l["event"] == name {
			return l
		}
	}
	t.Fatalf("no %q line in the output: %v", name, lines)
	return nil
}

// callsWithKey counts fakefal calls on host that our key authenticated
// (directly or through a token it minted) since mark.
func callsWithKey(host string, mark int) int {
	n := 0
	calls := fal.Calls()
	for _, c := range calls[min(mark, len(calls)):] {
		if c.Host == host && c.KeyID == keyID && c.Status < 400 {
			n++
		}
	}
	return n
}

func TestCurl(t *testing.T) {
	need(t, "bash", "curl")
	mark := len(fal.Calls())
	out := runExample(t, "http", "bash", "./curl.sh", "fal-ai/flux/dev")
	for _, want := range []string{`"prompt":"a lighthouse at dusk"`, `"COMPLETED"`, `"token":"<redacted>"`, `"code":"app_not_allowed"`, "HTTP 400"} {
		if !strings.Contains(out, want) {
			t.Errorf("curl.sh output lacks %s:\n%s", want, out)
		}
	}
	if n := callsWithKey("fal.run", mark); n < 1 {
		t.Errorf("fal.run saw %d calls made with the sidecar's key, want the example's run", n)
	}
	if n := callsWithKey("queue.fal.run", mark); n < 3 {
		t.Errorf("queue.fal.run saw %d calls made with the sidecar's key, want submit, polls and result", n)
	}
}

func TestPython(t *testing.T) {
	need(t, "python3")
	out := runExample(t, "http", "python3", "fal_proxy.py", "fal-ai/flux/dev")
	lines := jsonLines(out)
	if got := event(t, lines, "run")["prompt"]; got != "a lighthouse at dusk" {
		t.Errorf("run echoed prompt %v", got)
	}
	if got := event(t, lines, "queue")["prompt"]; got != "a lighthouse at dusk" {
		t.Errorf("queue result echoed prompt %v", got)
	}
	if tok := event(t, lines, "token"); tok["has_token"] != true || tok["app"] != "fal-ai/flux/dev" {
		t.Errorf("token line %v, want a token for fal-ai/flux/dev", tok)
	}
	if r := event(t, lines, "refused"); r["code"] != "app_not_allowed" || r["status"] != float64(400) {
		t.Errorf("refused line %v, want 400 app_not_allowed", r)
	}
}

func TestNodeRealtimeRelay(t *testing.T) {
	needNodeModules(t)
	mark := len(fal.Calls())
	out := runExample(t, "node", "node", "realtime-relay.mjs", "fal-ai/fast-lcm-diffusion", "3")
	s := event(t, jsonLines(out), "summary")
	if s["ok"] != true || s["results"] != float64(3) {
		t.Fatalf("summary %v, want 3 results:\n%s", s, out)
	}
	// The socket reached fal through the relay, with a token the sidecar minted.
	upgrades := 0
	for _, c := range fal.Calls()[mark:] {
		if c.Host == "fal.run" && c.Status == http.StatusSwitchingProtocols && c.KeyID == keyID {
			upgrades++
		}
	}
	if upgrades != 1 {
		t.Errorf("fal.run saw %d realtime upgrades with the sidecar's token, want 1", upgrades)
	}
}

func TestNodeQueue(t *testing.T) {
	needNodeModules(t)
	out := runExample(t, "node", "node", "queue.mjs", "fal-ai/flux/dev", "a lighthouse at dusk")
	lines := jsonLines(out)
	if r := event(t, lines, "result"); r["prompt"] != "a lighthouse at dusk" || r["requestId"] == "" {
		t.Errorf("result line %v", r)
	}
	event(t, lines, "queue") // at least one status update came through the sidecar
}

func TestNodeBackend(t *testing.T) {
	needNodeModules(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "backend.mjs")
	cmd.Dir = "node"
	cmd.Env = app.list(fmt.Sprintf("PORT=%d", port), "HOST=127.0.0.1")
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend.mjs did not listen on %s within 30s:\n%s", base, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	tests := []struct {
		name, method, path, target, body string
		wantStatus                       int
		wantIn                           string
	}{
		{"run through the backend", "POST", "/api/fal/proxy", "https://fal.run/fal-ai/flux/dev", `{"prompt":"from the browser"}`, 200, `"prompt":"from the browser"`},
		{"refusal keeps the sidecar's status and code", "POST", "/api/fal/proxy", "https://fal.run/someone-else/model", `{}`, 400, `"code":"app_not_allowed"`},
		{"missing target", "POST", "/api/fal/proxy", "", `{}`, 400, `"code":"target_missing"`},
		{"realtime token route", "GET", "/api/fal/realtime-token?app=fal-ai/fast-lcm-diffusion/realtime", "", "", 200, `"token":"`},
		{"token for an app not allowed", "GET", "/api/fal/realtime-token?app=someone-else/model", "", "", 403, `"code":"app_not_allowed"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(tc.method, base+tc.path, body)
			if tc.target != "" {
				req.Header.Set("x-fal-target-url", tc.target)
			}
			req.Header.Set("content-type", "application/json")
			// What a browser adds, which the backend must not pass on.
			req.Header.Set("Origin", "https://shop.example")
			req.Header.Set("Cookie", "session=abc")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus || !strings.Contains(string(b), tc.wantIn) {
				t.Errorf("%s %s: HTTP %d %s, want %d with %s", tc.method, tc.path, resp.StatusCode, b, tc.wantStatus, tc.wantIn)
			}
			if strings.Contains(string(b), keySecret) {
				t.Error("the answer holds the key's secret half")
			}
		})
	}
}
