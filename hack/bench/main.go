// Command bench measures falguard-sidecar side by side with the hops users
// would run instead (nginx, fal's official @fal-ai/server-proxy) and with no
// hop at all, on loopback against fakefal with zero artificial delay, and
// writes the report (docs/benchmarks.md). Peers alternate inside each
// workload so drift hits all sides alike. -quick runs tiny counts and only
// checks that every workload produced numbers; it asserts nothing about speed.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/falguard/falguard/hack/fakefal"
)

// counts bound every workload; full and quick differ only here.
type counts struct {
	rounds                     int
	warmup                     int
	proxyDur                   time.Duration
	sseStreams                 int
	relayRounds                int
	relayMsgs1K, relayMsgs256K int
	relayTput1K, relayTput256K int
	sessions                   int
	sessionDur                 time.Duration
	tokenReqs, tokenCallers    int
	tokenSerial                int
	startTrials, reloadTrials  int
}

var fullCounts = counts{
	rounds: 3, warmup: 500, proxyDur: 4 * time.Second, sseStreams: 50,
	relayRounds: 6, relayMsgs1K: 1000, relayMsgs256K: 150, relayTput1K: 3000, relayTput256K: 300,
	sessions: 500, sessionDur: 10 * time.Second,
	tokenReqs: 10000, tokenCallers: 200, tokenSerial: 2000,
	startTrials: 20, reloadTrials: 6,
}

var quickCounts = counts{
	rounds: 1, warmup: 20, proxyDur: 300 * time.Millisecond, sseStreams: 3,
	relayRounds: 1, relayMsgs1K: 30, relayMsgs256K: 5, relayTput1K: 50, relayTput256K: 10,
	sessions: 20, sessionDur: time.Second,
	tokenReqs: 200, tokenCallers: 20, tokenSerial: 20,
	startTrials: 2, reloadTrials: 1,
}

type config struct {
	quick       bool
	out         string
	sidecarBin  string
	sidecarB    string // optional second sidecar build, measured as its own peer (A/B of a fix)
	nodeBin     string
	nginxBin    string
	officialDir string
	distDir     string
	only        map[string]bool // workloads to run; empty = all
	counts      counts
}

// workloads, as -only names them.
var workloadNames = []string{"proxy", "sse", "relay", "sessions", "tokens", "alone"}

func (c config) runs(w string) bool { return len(c.only) == 0 || c.only[w] }

func main() {
	var cfg config
	flag.BoolVar(&cfg.quick, "quick", false, "tiny counts: check that every workload runs and produces numbers (no speed assertions)")
	flag.StringVar(&cfg.out, "out", "docs/benchmarks.md", "where to write the report")
	flag.StringVar(&cfg.sidecarBin, "sidecar", "bin/falguard-sidecar", "falguard-sidecar binary")
	flag.StringVar(&cfg.sidecarB, "sidecar-b", "", "a second falguard-sidecar build to measure side by side (A/B of a proposed fix)")
	flag.StringVar(&cfg.nodeBin, "node", "node", "node binary for the official proxy")
	flag.StringVar(&cfg.nginxBin, "nginx", "nginx", "nginx binary")
	flag.StringVar(&cfg.officialDir, "official-dir", "hack/bench/officialproxy", "the official proxy launcher (npm ci done)")
	flag.StringVar(&cfg.distDir, "dist", "dist", "where a built sidecar image archive may be")
	only := flag.String("only", "", "comma-separated workloads to run ("+strings.Join(workloadNames, ",")+"); default all (for profiling one)")
	flag.Parse()
	if *only != "" {
		cfg.only = map[string]bool{}
		for _, w := range strings.Split(*only, ",") {
			if !slices.Contains(workloadNames, w) {
				fmt.Fprintf(os.Stderr, "bench: -only %q: unknown workload %q, want some of %s\n", *only, w, strings.Join(workloadNames, ","))
				os.Exit(2)
			}
			cfg.only[w] = true
		}
	}
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	cfg.counts = fullCounts
	if cfg.quick {
		cfg.counts = quickCounts
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, cfg)
	cancel()
	stopAll()
	if err != nil {
		log.Printf("FAILED: %v", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	for _, p := range []*string{&cfg.sidecarBin, &cfg.sidecarB, &cfg.officialDir, &cfg.distDir} {
		if *p == "" {
			continue
		}
		if abs, err := filepath.Abs(*p); err == nil {
			*p = abs
		}
	}
	if _, err := os.Stat(filepath.Join(cfg.officialDir, "node_modules", "@fal-ai", "server-proxy")); err != nil {
		return fmt.Errorf("the official proxy is not installed in %s: run `npm ci` there (make bench does)", cfg.officialDir)
	}
	if _, err := os.Stat(cfg.sidecarBin); err != nil {
		return fmt.Errorf("sidecar binary %s: %w (make bench builds it)", cfg.sidecarBin, err)
	}
	workDir, err := os.MkdirTemp("", "falguard-bench-")
	if err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	defer func() { _ = os.RemoveAll(workDir) }()
	if err := os.Chmod(workDir, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}

	ff, err := fakefal.Start(fakefal.Options{Keys: []string{benchKey}})
	if err != nil {
		return err
	}
	defer ff.Close()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ff.CAPEM()) {
		return errors.New("fakefal's CA PEM did not parse")
	}
	e := &env{cfg: cfg, ff: ff, caPool: pool, workDir: workDir}

	started := time.Now()
	rep := &report{cfg: cfg, started: started.UTC(), machine: machineInfo(cfg)}
	all := []string{peerDirect, peerNginx, peerOfficial, peerSidecar}
	relayPeers := []string{peerDirect, peerNginx, peerSidecar} // the official proxy relays no WebSocket
	if cfg.sidecarB != "" {
		all = append(all, peerSidecarB)
		relayPeers = append(relayPeers, peerSidecarB)
	}
	rep.allPeers, rep.relayPeers = all, relayPeers

	steps := []struct {
		name string
		run  func() error
	}{
		{"proxy", func() (err error) { rep.proxy, err = e.runProxy(ctx, all); return err }},
		{"sse", func() (err error) { rep.sse, err = e.runSSE(ctx, all); return err }},
		{"relay", func() (err error) { rep.relay, err = e.runRelay(ctx, relayPeers); return err }},
		{"sessions", func() (err error) { rep.sessions, err = e.runSessions(ctx, relayPeers); return err }},
		{"tokens", func() (err error) { rep.tokens, err = e.runTokens(ctx, all); return err }},
		{"alone", func() (err error) { rep.alone, err = e.runSidecarAlone(ctx); return err }},
	}
	for i, st := range steps {
		if !cfg.runs(st.name) {
			continue
		}
		log.Printf("%d/%d %s", i+1, len(steps), st.name)
		if err := st.run(); err != nil {
			return fmt.Errorf("%s workload: %w", st.name, err)
		}
	}
	if ctx.Err() != nil {
		return errors.New("interrupted: the report was not written")
	}
	rep.took = time.Since(started)

	if err := os.MkdirAll(filepath.Dir(cfg.out), 0o755); err != nil {
		return fmt.Errorf("report dir: %w", err)
	}
	if err := os.WriteFile(cfg.out, []byte(rep.markdown()), 0o644); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	log.Printf("wrote %s in %s", cfg.out, rep.took.Round(time.Second))
	if problems := rep.check(); len(problems) > 0 {
		for _, p := range problems {
			log.Printf("missing figure: %s", p)
		}
		return fmt.Errorf("%d workload figures are missing or failed (see above)", len(problems))
	}
	return nil
}
