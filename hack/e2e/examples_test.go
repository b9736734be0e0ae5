//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/falguard/falguard/hack/demo"
	"github.com/falguard/falguard/hack/fakefal"
)

// appEnvNames is all an example gets: what the webhook injected into the app
// container, and PATH/HOME so interpreters start. Never a fal key.
var appEnvNames = []string{"PATH", "HOME", "FAL_PROXY_URL", "FAL_TOKEN_URL", "FAL_REALTIME_URL"}

var jwtShape = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.`)

// examples runs the programs under examples/ that the docs point app teams
// at, as the injected pod's app container would run them: with the env the
// emulated kubelet started that container with (from the pod as stored after
// admission), against the pod's own sidecar, so they cannot rot.
func (s *suite) examples(t *testing.T) {
	e, pod := s.env, s.pod
	env, err := pod.ContainerEnv(demo.AppContainer, appEnvNames...)
	must(t, err)
	fc, err := e.GetCredential(s.ctx, ns, credName)
	must(t, err)
	keyID := fc.Status.KeyID
	key, err := pod.VolumeKey()
	must(t, err)
	if demo.KeyID(key) != keyID {
		t.Fatalf("the sidecar's volume holds key %s, status says %s", demo.KeyID(key), keyID)
	}
	_, secret, _ := strings.Cut(key, ":")
	dir := filepath.Join(e.Root, "examples")

	// run runs one example to completion and returns what it printed.
	run := func(t *testing.T, sub string, argv ...string) string {
		t.Helper()
		name := "examples/" + sub + "/" + strings.TrimPrefix(argv[1], "./")
		ctx, cancel := context.WithTimeout(s.ctx, 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Dir = filepath.Join(dir, sub)
		cmd.Env = env
		cmd.WaitDelay = 5 * time.Second
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		began := time.Now()
		err := cmd.Run()
		text := out.String()
		if secret == "" || strings.Contains(text, secret) {
			t.Fatalf("%s printed the key's secret half", name)
		}
		if jwtShape.MatchString(text) {
			t.Errorf("%s printed a token", name)
		}
		if err != nil {
			t.Fatalf("%s %s failed: %v; its output:\n%s", name, strings.Join(argv[2:], " "), err, text)
		}
		e.Steps.Detail("%s %s: exit 0 in %s", name, strings.Join(argv[2:], " "), time.Since(began).Round(10*time.Millisecond))
		return text
	}
	// withKey counts calls fal answered below 400 that the credential's
	// current key authenticated (directly, or through a token it minted).
	withKey := func(calls []fakefal.Call) int {
		n := 0
		for _, c := range calls {
			if c.KeyID == keyID && c.Status < 400 {
				n++
			}
		}
		return n
	}

	stepStart := time.Now()
	t.Run("http/curl.sh", func(t *testing.T) {
		since := time.Now()
		out := run(t, "http", "bash", "./curl.sh", modelApp)
		for _, want := range []string{
			"== run https://fal.run/" + modelApp, `"prompt":"a lighthouse at dusk"`,
			`"COMPLETED"`, `"token":"<redacted>"`, `"app":"` + modelApp + `"`,
			`"code":"app_not_allowed"`, "HTTP 400",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("curl.sh printed no %s; its output:\n%s", want, out)
			}
		}
		if n := withKey(e.FalCallsSince(since, fakefal.HostRun, "/"+modelApp)); n != 1 {
			t.Errorf("fal.run saw %d calls to %s with the credential's key %s, want the example's one run", n, modelApp, keyID)
		}
		// submit, at least one status poll, the result
		if n := withKey(e.FalCallsSince(since, fakefal.HostQueue, "/fal-ai/flux/")); n < 3 {
			t.Errorf("queue.fal.run saw %d calls with the credential's key %s, want submit, polls and result", n, keyID)
		}
		if n := len(e.FalCallsSince(since, "", "/someone-else/")); n != 0 {
			t.Errorf("the refused call reached fal (%d calls)", n)
		}
	})

	t.Run("node/realtime-relay.mjs", func(t *testing.T) {
		must(t, nodeModulesCurrent(filepath.Join(dir, "node")))
		since := time.Now()
		out := run(t, "node", "node", "realtime-relay.mjs", rtApp, "3")
		lines := jsonLines(out)
		if n := len(eventLines(lines, "result")); n != 3 {
			t.Errorf("realtime-relay.mjs printed %d result lines, want 3; its output:\n%s", n, out)
		}
		if sum := eventLines(lines, "summary"); len(sum) != 1 || sum[0]["ok"] != true || sum[0]["results"] != float64(3) || sum[0]["app"] != rtApp {
			t.Errorf("realtime-relay.mjs summary %v, want ok with 3 results for %s", sum, rtApp)
		}
		// One socket reached fal through the relay, with a token minted by
		// the credential's key (fakefal records the key behind a JWT).
		var upgrades []fakefal.Call
		for _, c := range e.FalCallsSince(since, fakefal.HostRun, "/"+rtApp) {
			if c.Status == http.StatusSwitchingProtocols {
				upgrades = append(upgrades, c)
			}
		}
		if len(upgrades) != 1 || upgrades[0].KeyID != keyID {
			t.Errorf("fal.run realtime upgrades %+v, want one with a token of key %s", upgrades, keyID)
		}
	})

	t.Run("node/queue.mjs", func(t *testing.T) {
		must(t, nodeModulesCurrent(filepath.Join(dir, "node")))
		since := time.Now()
		out := run(t, "node", "node", "queue.mjs", modelApp, "a lighthouse at dusk")
		lines := jsonLines(out)
		res := eventLines(lines, "result")
		if len(res) != 1 || res[0]["prompt"] != "a lighthouse at dusk" || res[0]["requestId"] == "" || res[0]["requestId"] == nil {
			t.Errorf("queue.mjs result lines %v, want one echoing the prompt with a request id; its output:\n%s", res, out)
		}
		if len(eventLines(lines, "queue")) == 0 {
			t.Errorf("queue.mjs printed no queue status update; its output:\n%s", out)
		}
		if n := withKey(e.FalCallsSince(since, fakefal.HostQueue, "/fal-ai/flux/")); n < 3 {
			t.Errorf("queue.fal.run saw %d calls with the credential's key %s, want submit, polls and result", n, keyID)
		}
	})

	// Whatever the examples made the sidecar send, fal saw the current key.
	for _, c := range e.FalCallsSince(stepStart, "", "") {
		if c.Host != fakefal.HostRun && c.Host != fakefal.HostQueue && c.Host != fakefal.HostRest {
			continue // the manager's own calls (Platform API)
		}
		if c.KeyID != keyID {
			t.Errorf("fal saw %s %s%s with key %q, want the credential's current key %s", c.Method, c.Host, c.Path, c.KeyID, keyID)
		}
	}
}

// nodeModulesCurrent is nil when npm ci has installed dir's package-lock.json:
// npm's hidden lockfile in node_modules is written by every install, so it is
// newer than the lock it installed (`make e2e` and `make test-docs` share it).
func nodeModulesCurrent(dir string) error {
	fix := fmt.Sprintf("run `make e2e` (it runs npm ci there) or `cd %s && npm ci`", dir)
	lock, err := os.Stat(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return fmt.Errorf("examples/node: %w", err)
	}
	hidden, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json"))
	if err != nil {
		return fmt.Errorf("examples/node has no installed node_modules: %s", fix)
	}
	if hidden.ModTime().Before(lock.ModTime()) {
		return fmt.Errorf("examples/node/node_modules is older than package-lock.json: %s", fix)
	}
	return nil
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

func eventLines(lines []map[string]any, name string) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if l["event"] == name {
			out = append(out, l)
		}
	}
	return out
}
