package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

type report struct {
	cfg        config
	allPeers   []string // every peer, in report order
	relayPeers []string // those that relay WebSockets
	started    time.Time
	took       time.Duration
	machine    []string
	proxy      map[string]map[int]*proxyResult
	sse        map[string]*sseResult
	relay      map[string]map[int]*relayResult
	sessions   map[string]*sessionsResult
	tokens     map[string]*tokenResult
	alone      *sidecarAlone
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

func machineInfo(cfg config) []string {
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	memTotal := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		memTotal = strings.TrimSpace(strings.TrimPrefix(firstLine(b), "MemTotal:"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nginxV, _ := exec.CommandContext(ctx, cfg.nginxBin, "-v").CombinedOutput()
	nodeV, _ := exec.CommandContext(ctx, cfg.nodeBin, "--version").CombinedOutput()
	proxyV := "unknown"
	if b, err := os.ReadFile(filepath.Join(cfg.officialDir, "node_modules", "@fal-ai", "server-proxy", "package.json")); err == nil {
		var pj struct{ Version string }
		if json.Unmarshal(b, &pj) == nil {
			proxyV = pj.Version
		}
	}
	expressV := "unknown"
	if b, err := os.ReadFile(filepath.Join(cfg.officialDir, "node_modules", "express", "package.json")); err == nil {
		var pj struct{ Version string }
		if json.Unmarshal(b, &pj) == nil {
			expressV = pj.Version
		}
	}
	sidecarV, err := exec.CommandContext(ctx, cfg.sidecarBin, "version").CombinedOutput()
	if err != nil {
		sidecarV = []byte("unknown")
	}
	commit, _ := exec.CommandContext(ctx, "git", "rev-parse", "--short", "HEAD").Output()
	return []string{
		fmt.Sprintf("CPU: %s, %d cores visible (GOMAXPROCS %d); memory %s; kernel %s", cpu, runtime.NumCPU(), runtime.GOMAXPROCS(0), memTotal, kernel),
		fmt.Sprintf("falguard-sidecar: %s (commit %s); harness and fakefal: %s", firstLine(sidecarV), firstLine(commit), runtime.Version()),
		fmt.Sprintf("nginx: %s", strings.TrimPrefix(firstLine(nginxV), "nginx version: ")),
		fmt.Sprintf("official proxy: @fal-ai/server-proxy %s, express %s, node %s", proxyV, expressV, firstLine(nodeV)),
	}
}

func f1(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.1f", v)
}

func f2(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", v)
}

func f3(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", v)
}

func x(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", v)
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

type bar struct {
	name, figure string
	met          bool
	known        bool
}

func metStr(b bar) string {
	switch {
	case !b.known:
		return "not measured"
	case b.met:
		return "**met**"
	default:
		return "**not met**"
	}
}

// bars states each of the bars with its figure.
func (r *report) bars() []bar {
	var out []bar
	add := func(name, figure string, ok bool, known bool) {
		out = append(out, bar{name: name, figure: figure, met: ok, known: known})
	}
	for _, size := range relaySizes {
		d, n, s := r.relay[peerDirect][size], r.relay[peerNginx][size], r.relay[peerSidecar][size]
		if d == nil || n == nil || s == nil {
			continue
		}
		sp50 := percentile(s.rtt, .5) - percentile(d.rtt, .5)
		np50 := percentile(n.rtt, .5) - percentile(d.rtt, .5)
		sp99 := percentile(s.rtt, .99) - percentile(d.rtt, .99)
		np99 := percentile(n.rtt, .99) - percentile(d.rtt, .99)
		add(fmt.Sprintf("relay %s added p50 <= nginx's", sizeName(size)),
			fmt.Sprintf("sidecar %s ms vs nginx %s ms", f3(sp50), f3(np50)), sp50 <= np50, !math.IsNaN(sp50+np50))
		// A negative added p99 for nginx (noise below the floor) makes a
		// ratio meaningless; compare against max(nginx, 0) then.
		add(fmt.Sprintf("relay %s added p99 <= 1.2x nginx's", sizeName(size)),
			fmt.Sprintf("sidecar %s ms vs nginx %s ms (%s)", f3(sp99), f3(np99), x(ratio(sp99, np99))), sp99 <= 1.2*math.Max(np99, 0), !math.IsNaN(sp99+np99))
	}
	if n, s := r.relay[peerNginx][256<<10], r.relay[peerSidecar][256<<10]; n != nil && s != nil {
		add("relay MB/s at 256 KiB >= nginx's", fmt.Sprintf("sidecar %s MB/s vs nginx %s MB/s (%s)", f1(s.mbps()), f1(n.mbps()), x(ratio(s.mbps(), n.mbps()))),
			s.mbps() >= n.mbps(), true)
	}
	if p := r.proxy; p != nil {
		s, o, n := p[peerSidecar][32], p[peerOfficial][32], p[peerNginx][32]
		add("proxy req/s at c=32 >= 3x official proxy's", fmt.Sprintf("sidecar %s vs official %s req/s (%s)", f1(s.rps()), f1(o.rps()), x(ratio(s.rps(), o.rps()))),
			s.rps() >= 3*o.rps(), true)
		add("proxy req/s at c=32 >= 0.9x nginx's", fmt.Sprintf("sidecar %s vs nginx %s req/s (%s)", f1(s.rps()), f1(n.rps()), x(ratio(s.rps(), n.rps()))),
			s.rps() >= 0.9*n.rps(), true)
	}
	if t := r.tokens[peerSidecar]; t != nil {
		add(fmt.Sprintf("tokens: <= 2 upstream calls for %d requests", t.res.n+t.res.errs), fmt.Sprintf("%d upstream calls", t.upstreamCalls), t.upstreamCalls <= 2, true)
		p99 := percentile(t.res.lat, .99)
		floor := float64(r.cfg.counts.tokenCallers) / (float64(t.res.n) / t.res.elapsed.Seconds()) * 1000
		add(fmt.Sprintf("tokens: p99 < 2 ms (%d callers)", r.cfg.counts.tokenCallers),
			fmt.Sprintf("p99 %s ms; mean latency is at least callers/throughput = %s ms here (Little's law), so no hop on this machine can meet it", f3(p99), f2(floor)),
			p99 < 2, !math.IsNaN(p99))
		sp99 := percentile(t.serial.lat, .99)
		add("tokens: p99 < 2 ms (1 caller: the service time)", fmt.Sprintf("p50 %s ms, p99 %s ms over %d requests", f3(percentile(t.serial.lat, .5)), f3(sp99), t.serial.n),
			sp99 < 2, !math.IsNaN(sp99))
	}
	if a := r.alone; a != nil {
		add("idle RSS <= 12 MiB", fmt.Sprintf("%s MiB", f1(mib(a.idleRSSKiB))), a.idleRSSKiB <= 12*1024, a.idleRSSKiB > 0)
	}
	if s := r.sessions[peerSidecar]; s != nil {
		add(fmt.Sprintf("<= 64 KiB per idle relayed session at %d", s.sessions), fmt.Sprintf("%s KiB", f1(s.perSessionKiB())), s.perSessionKiB() <= 64, true)
	}
	if a := r.alone; a != nil {
		p50, mx := percentile(a.startup, .5), percentile(a.startup, 1)
		add("start to ready < 100 ms", fmt.Sprintf("p50 %s ms, max %s ms over %d starts", f1(p50), f1(mx), len(a.startup)), mx < 100, len(a.startup) > 0)
		rmx := percentile(a.reload, 1)
		add("reload to new key < 1 s", fmt.Sprintf("p50 %s ms, max %s ms over %d reloads (%d not seen)", f1(percentile(a.reload, .5)), f1(rmx), len(a.reload), a.reloadMissing),
			len(a.reload) > 0 && a.reloadMissing == 0 && rmx < 1000, len(a.reload) > 0)
	}
	return out
}

func sizeName(size int) string {
	if size >= 1<<10 && size%(1<<10) == 0 {
		return fmt.Sprintf("%d KiB", size>>10)
	}
	return fmt.Sprintf("%d B", size)
}

func (r *report) markdown() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	mode := "full"
	if r.cfg.quick {
		mode = "quick (tiny counts; figures are not meaningful)"
	}
	w("# Benchmarks\n\n")
	w("Generated by `make bench` (`go run ./hack/bench`); do not edit by hand. Run %s UTC, mode %s, took %s.\n\n",
		r.started.Format("2006-01-02 15:04"), mode, r.took.Round(time.Second))
	w("Everything runs on 127.0.0.1 against fakefal (hack/fakefal) with zero artificial delay: the client, fakefal and\n")
	w("the hop under test share the machine's cores, so absolute numbers are a floor, not a forecast; the ratios,\n")
	w("measured in the same run with the peers alternating, are what to read.\n\n")
	w("## Machine\n\n")
	for _, m := range r.machine {
		w("- %s\n", m)
	}
	w("\n## The bar\n\n| bar | figure | result |\n|---|---|---|\n")
	for _, br := range r.bars() {
		w("| %s | %s | %s |\n", br.name, br.figure, metStr(br))
	}

	met, total := 0, 0
	missed := map[string]bool{}
	for _, br := range r.bars() {
		if br.known {
			total++
			if br.met {
				met++
			} else {
				missed[br.name] = true
			}
		}
	}
	missedAny := func(sub string) bool {
		for n := range missed {
			if strings.Contains(n, sub) {
				return true
			}
		}
		return false
	}
	w("\n%d of %d bars met in this run.", met, total)
	if met < total {
		w(" How to read the misses:")
	}
	w("\n\n")
	w("- Tail figures (p99, and everything \"added\" at p99) on a 2-core machine shared by the client, fakefal and the\n")
	w("  hop swing by milliseconds between runs for every peer (negative \"added\" values are that noise: the hop run\n")
	w("  happened to be luckier than the direct one). Compare p50s and throughput first.\n")
	if missedAny("callers)") {
		w("- The token p99 bar cannot be met by any hop with %d closed-loop callers on this machine: with N callers always\n", r.cfg.counts.tokenCallers)
		w("  waiting, mean latency = N / throughput (Little's law), shown next to the figure. The 1-caller row is the\n")
		w("  sidecar's service time, which is what the bar is about.\n")
	}
	if missedAny("proxy req/s") {
		w("- Proxy requests/s: the sidecar is Go's net/http server and Transport (a goroutine per connection plus the\n")
		w("  Transport's read and write loops per upstream connection). Profiles show its time in syscalls (the same\n")
		w("  four per request as nginx), Go scheduler hand-offs between those goroutines, and TLS; it spends about twice\n")
		w("  nginx's CPU per request, and on a machine where the client and fakefal compete for the same two cores that\n")
		w("  CPU is the throughput. It is still several times ahead of the official proxy.\n")
	}
	if missedAny("relay 256 KiB") || missedAny("MB/s") {
		w("- Relay at 256 KiB: with a 4 KiB WebSocket write buffer, gorilla/websocket sends each relayed message as 4 KiB\n")
		w("  fragments, one write syscall and TLS record each (64 per 256 KiB message and direction; profiles show the\n")
		w("  relay's time in those writes). A 64 KiB write buffer from the shared pool (idle sessions hold none) cut the\n")
		w("  added p50 from 0.87 to 0.32 ms and raised MB/s past nginx's in a same-run A/B (`-sidecar-b`).\n")
	}
	if missedAny("relay 1 KiB added p50") {
		w("- Relay at 1 KiB: the sidecar's added p50 is within some microseconds of nginx's; runs differ by as much. The\n")
		w("  relay's CPU is its read and write syscalls; what remains is Go's netpoller waking a goroutine per direction\n")
		w("  where nginx's worker handles the event in the thread that polled.\n")
	}

	w("\n## Peers\n\n")
	w("- **direct**: the client talks TLS to fakefal with the key, no hop (the floor and the baseline of every ratio\n")
	w("  marked \"vs direct\").\n")
	w("- **nginx**: Debian's nginx as an HTTP and WebSocket reverse proxy (2 workers, upstream keepalive, TLS to fakefal\n")
	w("  verified with its CA, `Authorization: Key` added, access log off, buffering off); it routes by `x-fal-target-url`\n")
	w("  with a `map`, so the client sends exactly what it sends to the sidecar.\n")
	w("- **official proxy**: `@fal-ai/server-proxy` with its Express adapter (`hack/bench/officialproxy`), unchanged;\n")
	w("  `allowedUrlPatterns` widened for fakefal's port and `rest.fal.ai/tokens/`, fal's hosts resolved to 127.0.0.1 by an\n")
	w("  undici `connect.lookup` override, fakefal's CA from `NODE_EXTRA_CA_CERTS`. It relays no WebSocket, so it has no\n")
	w("  realtime figures (fal-js clients connect to fal directly with a token it fetched).\n")
	w("- **falguard-sidecar**: `falguard-sidecar run --key-env FAL_KEY --allowed-app 'fal-ai/*'` with fakefal's hosts\n")
	w("  overridden; default settings otherwise.\n")
	if r.cfg.sidecarB != "" {
		w("- **%s**: a second sidecar build (%s), run with the same flags, to compare a proposed change in the same run.\n", peerSidecarB, r.cfg.sidecarB)
	}
	w("\n")
	w("CPU is user+system time of the hop's processes (nginx: master and workers) from `/proc/<pid>/stat`; RSS is `VmRSS`,\n")
	w("peak RSS `VmHWM`, from `/proc/<pid>/status`. Hop-only figures (CPU, RSS) have no direct value, so their ratio is\n")
	w("to nginx's.\n")

	// 1. proxy
	w("\n## 1. Proxy: 1 KiB JSON POSTs to a fal.run app\n\n")
	w("%d rounds of %s per peer and concurrency, peers rotated each round.\n", r.cfg.counts.rounds, r.cfg.counts.proxyDur)
	for _, c := range proxyConcs {
		if r.proxy == nil {
			break
		}
		w("\n### Concurrency %d\n\n", c)
		w("| peer | req/s | vs direct | p50 ms | p99 ms | p50 vs direct | CPU s / 10k req | vs nginx | peak RSS MiB | vs nginx | requests | errors |\n")
		w("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		d := r.proxy[peerDirect][c]
		n := r.proxy[peerNginx][c]
		for _, p := range r.allPeers {
			pr := r.proxy[p][c]
			if pr == nil {
				continue
			}
			cpu, cpuX, rss, rssX := "n/a", "n/a", "n/a", "n/a"
			if p != peerDirect {
				cpu, cpuX = f3(pr.cpuPer10k()), x(ratio(pr.cpuPer10k(), n.cpuPer10k()))
				rss, rssX = f1(mib(pr.hwmKiB)), x(ratio(float64(pr.hwmKiB), float64(n.hwmKiB)))
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d |\n", p, f1(pr.rps()), x(ratio(pr.rps(), d.rps())),
				f3(percentile(pr.res.lat, .5)), f3(percentile(pr.res.lat, .99)),
				x(ratio(percentile(pr.res.lat, .5), percentile(d.res.lat, .5))), cpu, cpuX, rss, rssX, pr.res.n, pr.res.errs)
		}
	}

	// 2. SSE
	w("\n## 2. SSE: a %d-event stream\n\n", sseEvents)
	w("%d streams per peer per round, %d rounds; time from sending the request to the first and to the last event.\n\n", r.cfg.counts.sseStreams, r.cfg.counts.rounds)
	w("| peer | first p50 ms | added | last p50 ms | added | last p99 ms | added | last vs direct | streams | errors |\n|---|---|---|---|---|---|---|---|---|---|\n")
	if d := r.sse[peerDirect]; d != nil {
		df, dl, dl99 := percentile(d.first, .5), percentile(d.last, .5), percentile(d.last, .99)
		for _, p := range r.allPeers {
			s := r.sse[p]
			if s == nil {
				continue
			}
			fp, lp, lp99 := percentile(s.first, .5), percentile(s.last, .5), percentile(s.last, .99)
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %d | %d |\n", p, f3(fp), f3(fp-df), f3(lp), f3(lp-dl), f3(lp99), f3(lp99-dl99), x(ratio(lp, dl)), len(s.last), s.errs)
		}
	}

	// 3. relay
	w("\n## 3. Realtime relay: binary msgpack messages echoed by fakefal\n\n")
	w("%d rounds, peers rotated each round. ", r.cfg.counts.relayRounds)
	w("Per round and size: round trips one at a time on one WebSocket (latency), then a window of 8 messages in flight\n")
	w("(throughput, payload MB/s each way, 1 MB = 10^6 bytes). Added = hop minus direct at the same percentile.\n")
	for _, size := range relaySizes {
		w("\n### %s messages\n\n", sizeName(size))
		w("| peer | p50 ms | p99 ms | added p50 | added p99 | MB/s | vs direct | messages |\n|---|---|---|---|---|---|---|---|\n")
		d := r.relay[peerDirect][size]
		for _, p := range r.relayPeers {
			rr := r.relay[p][size]
			if rr == nil || d == nil {
				continue
			}
			p50, p99 := percentile(rr.rtt, .5), percentile(rr.rtt, .99)
			w("| %s | %s | %s | %s | %s | %s | %s | %d |\n", p, f3(p50), f3(p99), f3(p50-percentile(d.rtt, .5)), f3(p99-percentile(d.rtt, .99)),
				f1(rr.mbps()), x(ratio(rr.mbps(), d.mbps())), len(rr.rtt))
		}
	}
	if s := r.sessions; len(s) > 0 {
		var sessN int
		var dur time.Duration
		for _, v := range s {
			sessN, dur = v.sessions, v.loadDur
		}
		w("\n### %d concurrent sessions, 8 messages/s each (1 KiB)\n\n", sessN)
		w("Each peer fresh, alone on the machine. RSS before: one warm session; idle: all %d open, no traffic; then %s\n", sessN, dur.Round(100*time.Millisecond))
		w("of every session sending a message each 125 ms (fal-js's 128 ms throttle) and waiting for its echo.\n\n")
		w("| peer | RSS before MiB | RSS idle MiB | KiB per idle session | vs nginx | CPU s | CPU %% of a core | vs nginx | RSS loaded MiB | peak MiB | RTT p50 ms | RTT p99 ms | messages | errors |\n")
		w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		n := s[peerNginx]
		for _, p := range r.relayPeers {
			v := s[p]
			if v == nil {
				continue
			}
			if p == peerDirect {
				w("| %s | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | %s | %s | %d | %d |\n", p,
					f3(percentile(v.rtt, .5)), f3(percentile(v.rtt, .99)), v.msgs, v.errs)
				continue
			}
			cpuPct := v.cpu / v.loadDur.Seconds() * 100
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d |\n", p,
				f1(mib(v.rssBaseKiB)), f1(mib(v.rssIdleKiB)), f1(v.perSessionKiB()), x(ratio(v.perSessionKiB(), n.perSessionKiB())),
				f2(v.cpu), f1(cpuPct), x(ratio(v.cpu, n.cpu)), f1(mib(v.rssLoadKiB)), f1(mib(v.hwmKiB)),
				f3(percentile(v.rtt, .5)), f3(percentile(v.rtt, .99)), v.msgs, v.errs)
		}
	}

	// 4. tokens
	w("\n## 4. Tokens: %d requests from %d concurrent callers for one app\n\n", r.cfg.counts.tokenReqs, r.cfg.counts.tokenCallers)
	w("The sidecar answers `GET /api/fal/token`; the others pass each request to fal's `POST /tokens/` (the official\n")
	w("proxy 1.2.1 only after widening its allowlist). Upstream calls are counted at fakefal.\n\n")
	w("| peer | upstream token calls | p50 ms | p99 ms | p99 vs direct | req/s | requests | errors | 1 caller: p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|\n")
	if d := r.tokens[peerDirect]; d != nil {
		for _, p := range r.allPeers {
			t := r.tokens[p]
			if t == nil {
				continue
			}
			w("| %s | %d | %s | %s | %s | %s | %d | %d | %s | %s |\n", p, t.upstreamCalls, f3(percentile(t.res.lat, .5)), f3(percentile(t.res.lat, .99)),
				x(ratio(percentile(t.res.lat, .99), percentile(d.res.lat, .99))), f1(float64(t.res.n)/t.res.elapsed.Seconds()), t.res.n, t.res.errs+t.serial.errs,
				f3(percentile(t.serial.lat, .5)), f3(percentile(t.serial.lat, .99)))
		}
	}

	// 5. sidecar alone
	if a := r.alone; a != nil {
		w("\n## 5. The sidecar alone\n\n")
		w("| figure | value |\n|---|---|\n")
		w("| start to `/startupz` ready (credentials dir), p50 / max over %d starts | %s / %s ms |\n", len(a.startup), f1(percentile(a.startup, .5)), f1(percentile(a.startup, 1)))
		w("| idle RSS (ready, no traffic; production flags, no `--upstream-ca-file`) | %s MiB |\n", f1(mib(a.idleRSSKiB)))
		w("| idle RSS with `--upstream-ca-file` (system roots parsed eagerly to add fakefal's CA) | %s MiB |\n", f1(mib(a.idleCARSSKiB)))
		w("| RSS after the first request and token (system roots loaded, as production after its first call) | %s MiB |\n", f1(mib(a.warmRSSKiB)))
		w("| binary size (`-trimpath -ldflags '-s -w'`) | %s MiB |\n", f1(float64(a.binaryBytes)/(1<<20)))
		if a.imageName != "" {
			w("| image archive %s | %s MiB |\n", a.imageName, f1(float64(a.imageBytes)/(1<<20)))
		} else {
			w("| image size | no image archive in dist/ (build one to have it measured) |\n")
		}
		w("| key reload (`..data` swapped) to first request signed with the new key, p50 / max over %d | %s / %s ms |\n",
			len(a.reload), f1(percentile(a.reload, .5)), f1(percentile(a.reload, 1)))
	}
	return b.String()
}

// check lists every workload figure that is missing or came with errors;
// quick mode fails on any (so the harness never rots), full mode too.
func (r *report) check() []string {
	var out []string
	bad := func(cond bool, format string, a ...any) {
		if cond {
			out = append(out, fmt.Sprintf(format, a...))
		}
	}
	runs := r.cfg.runs
	for _, p := range r.allPeers {
		for _, c := range proxyConcs {
			if !runs("proxy") {
				break
			}
			pr := r.proxy[p][c]
			bad(pr == nil || pr.res.n == 0, "proxy c=%d %s: no requests", c, p)
			if pr != nil {
				bad(pr.res.errs > 0, "proxy c=%d %s: %d errors, first: %v", c, p, pr.res.errs, pr.res.firstErr)
				bad(p != peerDirect && (pr.hwmKiB == 0 || math.IsNaN(pr.cpuPer10k())), "proxy c=%d %s: no CPU/RSS figure", c, p)
			}
		}
		s := r.sse[p]
		bad(runs("sse") && (s == nil || len(s.last) == 0), "SSE %s: no streams", p)
		if s != nil {
			bad(s.errs > 0, "SSE %s: %d errors, first: %v", p, s.errs, s.firstErr)
		}
		t := r.tokens[p]
		bad(runs("tokens") && (t == nil || t.res.n == 0), "tokens %s: no requests", p)
		if t != nil {
			bad(t.res.errs > 0, "tokens %s: %d errors, first: %v", p, t.res.errs, t.res.firstErr)
			bad(t.serial.n == 0 || t.serial.errs > 0, "tokens %s, 1 caller: %d requests, %d errors, first: %v", p, t.serial.n, t.serial.errs, t.serial.firstErr)
		}
	}
	for _, p := range r.relayPeers {
		for _, size := range relaySizes {
			rr := r.relay[p][size]
			bad(runs("relay") && (rr == nil || len(rr.rtt) == 0 || rr.bytes == 0), "relay %s %s: no messages", sizeName(size), p)
		}
		s := r.sessions[p]
		bad(runs("sessions") && (s == nil || s.msgs == 0), "sessions %s: no messages", p)
		if s != nil {
			bad(s.errs > 0, "sessions %s: %d errors, first: %v", p, s.errs, s.firstErr)
			bad(p != peerDirect && s.rssIdleKiB == 0, "sessions %s: no RSS figure", p)
		}
	}
	a := r.alone
	bad(runs("alone") && (a == nil || len(a.startup) == 0), "sidecar alone: no start-up figure")
	if a != nil {
		bad(a.idleRSSKiB == 0, "sidecar alone: no idle RSS")
		bad(a.binaryBytes == 0, "sidecar alone: no binary size")
		bad(len(a.reload) == 0 || a.reloadMissing > 0, "sidecar alone: %d key reloads not seen", a.reloadMissing)
	}
	return out
}
