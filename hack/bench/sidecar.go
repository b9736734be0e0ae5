package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/falguard/falguard/hack/fakefal"
)

const benchKey2 = "benchkid2:benchsecret2"

// sidecarAlone holds the figures of the sidecar on its own.
type sidecarAlone struct {
	startup       []time.Duration
	idleRSSKiB    int64 // ready, no traffic yet, production flags (no --upstream-ca-file)
	idleCARSSKiB  int64 // ready, no traffic, with --upstream-ca-file (system roots loaded eagerly)
	warmRSSKiB    int64 // after one proxied request and one token
	binaryBytes   int64
	imageBytes    int64 // 0 when dist/ holds no image
	imageName     string
	reload        []time.Duration
	reloadMissing int // reloads not seen within the bound
}

// writeCreds lays out dir the way kubelet's atomic writer does: files are
// symlinks into `..data`, which points at a timestamped directory and is
// swapped with one rename.
func writeCreds(dir, key string, gen int) error {
	ts := filepath.Join(dir, fmt.Sprintf("..2026_12_04_00_00_00.%09d", gen))
	if err := os.MkdirAll(ts, 0o755); err != nil {
		return fmt.Errorf("credentials dir: %w", err)
	}
	kid, _, _ := strings.Cut(key, ":")
	pol := fmt.Sprintf(`{"version":1,"credential":"bench/bench","keyID":%q,"allowedApps":["fal-ai/*"],"tokenTTLSeconds":120}`, kid)
	if err := os.WriteFile(filepath.Join(ts, "key"), []byte(key), 0o600); err != nil {
		return fmt.Errorf("credentials dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(ts, "policy.json"), []byte(pol), 0o644); err != nil {
		return fmt.Errorf("credentials dir: %w", err)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return fmt.Errorf("credentials dir: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return fmt.Errorf("credentials dir: swapping ..data: %w", err)
	}
	for _, f := range []string{"key", "policy.json"} {
		link := filepath.Join(dir, f)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", f), link); err != nil {
			return fmt.Errorf("credentials dir: %w", err)
		}
	}
	return nil
}

func (e *env) runSidecarAlone(ctx context.Context) (*sidecarAlone, error) {
	res := &sidecarAlone{}
	if st, err := os.Stat(e.cfg.sidecarBin); err == nil {
		res.binaryBytes = st.Size()
	}
	res.imageName, res.imageBytes = findImage(e.cfg.distDir)

	creds, err := os.MkdirTemp(e.workDir, "creds-")
	if err != nil {
		return nil, fmt.Errorf("credentials dir: %w", err)
	}
	if err := writeCreds(creds, benchKey, 1); err != nil {
		return nil, err
	}
	probe := &http.Client{Timeout: 500 * time.Millisecond}

	// Start to /startupz ready, with the Kubernetes credentials layout.
	for range e.cfg.counts.startTrials {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		opsPort, err := freePort()
		if err != nil {
			return nil, err
		}
		args, envv := e.sidecarArgs(port, opsPort, sidecarOpts{credsDir: creds})
		startupz := fmt.Sprintf("http://127.0.0.1:%d/startupz", opsPort)
		t0 := time.Now()
		p, err := startProc("falguard-sidecar", envv, e.workDir, nil, e.cfg.sidecarBin, args...)
		if err != nil {
			return nil, err
		}
		err = waitFor(ctx, p, 10*time.Second, time.Millisecond, "/startupz", func() bool { return get200(probe, startupz) })
		d := time.Since(t0)
		p.stop()
		if err != nil {
			return nil, err
		}
		res.startup = append(res.startup, d)
	}
	probe.CloseIdleConnections()

	// Idle RSS as in production (no extra CA: it never sends a request here).
	idle, _, err := e.startSidecar(ctx, sidecarOpts{credsDir: creds, noCA: true})
	if err != nil {
		return nil, err
	}
	time.Sleep(time.Second)
	res.idleRSSKiB = memKiB(idle.pid(), "VmRSS")
	idle.stop()

	// With fakefal's CA: idle, then after the first request and token.
	ep, _, err := e.startSidecar(ctx, sidecarOpts{credsDir: creds})
	if err != nil {
		return nil, err
	}
	defer ep.stop()
	time.Sleep(time.Second)
	res.idleCARSSKiB = memKiB(ep.pid(), "VmRSS")
	if err := do(ep.client, ep.run("/"+benchApp, jsonBody(1024, ""))); err != nil {
		return nil, fmt.Errorf("first request through the sidecar: %w", err)
	}
	if err := do(ep.client, ep.token()); err != nil {
		return nil, fmt.Errorf("first token from the sidecar: %w", err)
	}
	time.Sleep(time.Second)
	res.warmRSSKiB = memKiB(ep.pid(), "VmRSS")

	// Key reload: swap `..data` to a new key and time until fakefal sees a
	// request signed with it.
	e.ff.AddKey(benchKey2)
	keys := []string{benchKey, benchKey2}
	for i := range e.cfg.counts.reloadTrials {
		oldKey, newKey := keys[i%2], keys[(i+1)%2]
		oldID, _, _ := strings.Cut(oldKey, ":")
		newID, _, _ := strings.Cut(newKey, ":")
		if id, err := e.signedBy(ep); err != nil || id != oldID {
			return nil, fmt.Errorf("before reload %d: request signed by %q, want %q (err %w)", i+1, id, oldID, err)
		}
		// Land the swap at a random point of any polling interval.
		time.Sleep(time.Duration(137*(i+1)%1000) * time.Millisecond)
		t0 := time.Now()
		if err := writeCreds(creds, newKey, i+2); err != nil {
			return nil, err
		}
		seen := false
		for time.Since(t0) < 10*time.Second && ctx.Err() == nil {
			id, err := e.signedBy(ep)
			if err == nil && id == newID {
				seen = true
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		if !seen {
			res.reloadMissing++
			log.Printf("sidecar: reload %d not seen within 10s", i+1)
			continue
		}
		res.reload = append(res.reload, time.Since(t0))
	}
	return res, nil
}

// signedBy sends one request through ep and reports which key fakefal saw.
func (e *env) signedBy(ep *endpoint) (string, error) {
	e.ff.ResetCalls()
	if err := do(ep.client, ep.run("/"+benchApp, []byte(`{"prompt":"reload"}`))); err != nil {
		return "", err
	}
	calls := e.ff.Calls()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].Host == fakefal.HostRun {
			return calls[i].KeyID, nil
		}
	}
	return "", fmt.Errorf("fakefal saw no fal.run call")
}

// findImage reports the sidecar image archive in dist/, if a build left one.
func findImage(dist string) (string, int64) {
	entries, err := os.ReadDir(dist)
	if err != nil {
		return "", 0
	}
	for _, e := range entries {
		n := e.Name()
		if strings.Contains(n, "sidecar") && (strings.HasSuffix(n, ".tar") || strings.HasSuffix(n, ".tar.gz") || strings.HasSuffix(n, ".oci")) {
			if st, err := e.Info(); err == nil {
				return n, st.Size()
			}
		}
	}
	return "", 0
}
