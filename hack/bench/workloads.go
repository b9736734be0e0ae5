package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/falguard/falguard/hack/fakefal"
)

// jsonBody is a JSON object of exactly n bytes.
func jsonBody(n int, extra string) []byte {
	head := `{` + extra + `"prompt":"`
	tail := `"}`
	pad := n - len(head) - len(tail)
	if pad < 0 {
		pad = 0
	}
	return []byte(head + strings.Repeat("a", pad) + tail)
}

// do sends req and reads the whole answer; anything but 200 is an error.
func do(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("reading answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK || n == 0 {
		return fmt.Errorf("answer %d with %d bytes", resp.StatusCode, n)
	}
	return nil
}

// loadResult is what a closed-loop load run observed.
type loadResult struct {
	n, errs  int
	elapsed  time.Duration
	lat      []time.Duration
	firstErr error
}

// runLoad runs conc closed-loop workers, each calling fn until dur passes
// (dur > 0) or, with dur == 0, until total calls have been made.
func runLoad(ctx context.Context, conc int, dur time.Duration, total int, fn func() error) loadResult {
	var (
		mu   sync.Mutex
		res  loadResult
		next atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(dur)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 1024)
			var errs int
			var firstErr error
			for ctx.Err() == nil {
				if dur > 0 && time.Now().After(deadline) {
					break
				}
				if dur == 0 && next.Add(1) > int64(total) {
					break
				}
				t := time.Now()
				if err := fn(); err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				lat = append(lat, time.Since(t))
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			res.errs += errs
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.n = len(res.lat)
	return res
}

// startAll brings up the peers; on error it stops those already started.
func (e *env) startAll(ctx context.Context, names []string) (map[string]*endpoint, error) {
	eps := map[string]*endpoint{}
	for _, n := range names {
		ep, err := e.start(ctx, n)
		if err != nil {
			for _, s := range eps {
				s.stop()
			}
			return nil, fmt.Errorf("starting %s: %w", n, err)
		}
		eps[n] = ep
	}
	return eps, nil
}

func stopEndpoints(eps map[string]*endpoint) {
	for _, ep := range eps {
		ep.stop()
	}
}

// ---- 1. proxy ----

type proxyResult struct {
	res    loadResult
	cpu    float64 // hop CPU seconds spent during the measured runs
	hwmKiB int64   // hop peak RSS over the whole workload
}

func (r *proxyResult) rps() float64 { return float64(r.res.n) / r.res.elapsed.Seconds() }
func (r *proxyResult) cpuPer10k() float64 {
	return r.cpu / float64(r.res.n) * 10000
}

var proxyConcs = []int{1, 32}

func (e *env) runProxy(ctx context.Context, peers []string) (map[string]map[int]*proxyResult, error) {
	eps, err := e.startAll(ctx, peers)
	if err != nil {
		return nil, err
	}
	defer stopEndpoints(eps)
	body := jsonBody(1024, "")
	out := map[string]map[int]*proxyResult{}
	for _, p := range peers {
		out[p] = map[int]*proxyResult{}
		for _, c := range proxyConcs {
			out[p][c] = &proxyResult{}
		}
		ep := eps[p]
		// Warm up: connections, TLS sessions, JIT (node), caches.
		w := runLoad(ctx, 8, 0, e.cfg.counts.warmup, func() error { return do(ep.client, ep.run("/"+benchApp, body)) })
		if w.n == 0 {
			return nil, fmt.Errorf("proxy warm-up through %s: every request failed, first: %w", p, w.firstErr)
		}
		for _, c := range proxyConcs { // failures count, but the run goes on
			out[p][c].res.errs += w.errs
			if out[p][c].res.firstErr == nil {
				out[p][c].res.firstErr = w.firstErr
			}
		}
	}
	for r := range e.cfg.counts.rounds {
		for _, p := range rotate(peers, r) {
			ep := eps[p]
			for _, c := range proxyConcs {
				cpu0 := hopCPU(ep)
				lr := runLoad(ctx, c, e.cfg.counts.proxyDur, 0, func() error { return do(ep.client, ep.run("/"+benchApp, body)) })
				pr := out[p][c]
				pr.cpu += hopCPU(ep) - cpu0
				pr.res.n += lr.n
				pr.res.errs += lr.errs
				pr.res.elapsed += lr.elapsed
				pr.res.lat = append(pr.res.lat, lr.lat...)
				if pr.res.firstErr == nil {
					pr.res.firstErr = lr.firstErr
				}
			}
			e.ff.ResetCalls() // keep fakefal's call log bounded
		}
		log.Printf("proxy: round %d/%d done", r+1, e.cfg.counts.rounds)
	}
	for _, p := range peers {
		hwm := memIfHop(eps[p], "VmHWM")
		for _, c := range proxyConcs {
			out[p][c].hwmKiB = hwm
		}
	}
	return out, nil
}

func hopCPU(ep *endpoint) float64 {
	if ep.proc == nil {
		return 0
	}
	return cpuSeconds(ep.pid())
}

func memIfHop(ep *endpoint, field string) int64 {
	if ep.proc == nil {
		return 0
	}
	return memKiB(ep.pid(), field)
}

// ---- 2. SSE ----

type sseResult struct {
	first, last []time.Duration
	errs        int
	firstErr    error
}

const sseEvents = 100

func (e *env) runSSE(ctx context.Context, peers []string) (map[string]*sseResult, error) {
	eps, err := e.startAll(ctx, peers)
	if err != nil {
		return nil, err
	}
	defer stopEndpoints(eps)
	body := jsonBody(256, fmt.Sprintf(`"num_events":%d,`, sseEvents))
	out := map[string]*sseResult{}
	for _, p := range peers {
		out[p] = &sseResult{}
		// Warm-up stream (connections, JIT); a failure counts as an error.
		if _, _, err := sseOnce(eps[p], body); err != nil {
			out[p].errs++
			out[p].firstErr = fmt.Errorf("warm-up: %w", err)
		}
	}
	for r := range e.cfg.counts.rounds {
		for _, p := range rotate(peers, r) {
			for range e.cfg.counts.sseStreams {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				f, l, err := sseOnce(eps[p], body)
				if err != nil {
					out[p].errs++
					if out[p].firstErr == nil {
						out[p].firstErr = err
					}
					continue
				}
				out[p].first = append(out[p].first, f)
				out[p].last = append(out[p].last, l)
			}
			e.ff.ResetCalls()
		}
	}
	return out, nil
}

// sseOnce opens one 100-event stream and times its first and last event.
func sseOnce(ep *endpoint, body []byte) (first, last time.Duration, err error) {
	req := ep.run("/"+benchApp+"/stream", body)
	req.Header.Set("Accept", "text/event-stream")
	t0 := time.Now()
	resp, err := ep.client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("SSE answer %d", resp.StatusCode)
	}
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	n := 0
	for n < sseEvents {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, 0, fmt.Errorf("SSE stream ended after %d of %d events: %w", n, sseEvents, err)
		}
		if bytes.HasPrefix(line, []byte("data:")) {
			n++
			if n == 1 {
				first = time.Since(t0)
			}
		}
	}
	last = time.Since(t0)
	_, _ = io.Copy(io.Discard, resp.Body)
	return first, last, nil
}

// ---- 3. realtime relay ----

var relaySizes = []int{1 << 10, 256 << 10}

type relayResult struct {
	rtt      []time.Duration
	bytes    int64 // payload bytes echoed in the throughput runs
	tputTime time.Duration
}

func (r *relayResult) mbps() float64 { return float64(r.bytes) / 1e6 / r.tputTime.Seconds() }

// relayMsg is a fal-js style msgpack binary message carrying size bytes.
func relayMsg(size int, id string) []byte {
	b, _ := msgpack.Marshal(map[string]any{"request_id": id, "image": bytes.Repeat([]byte{0x5a}, size)})
	return b
}

func dialWS(ctx context.Context, ep *endpoint) (*websocket.Conn, error) {
	c, resp, err := ep.dialer.DialContext(ctx, ep.wsURL, ep.wsHeader)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("realtime handshake through %s: %s: %w", ep.name, resp.Status, err)
		}
		return nil, fmt.Errorf("realtime handshake through %s: %w", ep.name, err)
	}
	c.SetReadLimit(64 << 20)
	return c, nil
}

// roundTrip sends msg and waits for the echo.
func roundTrip(c *websocket.Conn, msg []byte) error {
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	mt, r, err := c.NextReader()
	if err != nil {
		return fmt.Errorf("receiving: %w", err)
	}
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return fmt.Errorf("receiving: %w", err)
	}
	if mt != websocket.BinaryMessage || n < int64(len(msg)) {
		return fmt.Errorf("echo was type %d with %d bytes, want binary with at least %d", mt, n, len(msg))
	}
	return nil
}

func (e *env) runRelay(ctx context.Context, peers []string) (map[string]map[int]*relayResult, error) {
	eps, err := e.startAll(ctx, peers)
	if err != nil {
		return nil, err
	}
	defer stopEndpoints(eps)
	out := map[string]map[int]*relayResult{}
	for _, p := range peers {
		out[p] = map[int]*relayResult{}
		for _, s := range relaySizes {
			out[p][s] = &relayResult{}
		}
	}
	for r := range e.cfg.counts.relayRounds {
		for _, p := range rotate(peers, r) {
			for _, size := range relaySizes {
				if err := e.relayRound(ctx, eps[p], size, out[p][size]); err != nil {
					return nil, err
				}
			}
		}
		log.Printf("relay: round %d/%d done", r+1, e.cfg.counts.relayRounds)
	}
	return out, nil
}

func (e *env) relayRound(ctx context.Context, ep *endpoint, size int, res *relayResult) error {
	c, err := dialWS(ctx, ep)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	msg := relayMsg(size, "bench")
	n, tputN := e.cfg.counts.relayMsgs1K, e.cfg.counts.relayTput1K
	if size > 1<<10 {
		n, tputN = e.cfg.counts.relayMsgs256K, e.cfg.counts.relayTput256K
	}
	for i := range 10 + n { // the first 10 warm the path up
		t := time.Now()
		if err := roundTrip(c, msg); err != nil {
			return fmt.Errorf("relay %d B through %s: %w", size, ep.name, err)
		}
		if i >= 10 {
			res.rtt = append(res.rtt, time.Since(t))
		}
	}
	// Throughput: keep a window of messages in flight on one socket.
	const window = 8
	sem := make(chan struct{}, window)
	errc := make(chan error, 2)
	t0 := time.Now()
	go func() {
		for range tputN {
			select {
			case sem <- struct{}{}:
			case <-time.After(10 * time.Second):
				errc <- errors.New("throughput writer stalled")
				return
			}
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
				errc <- fmt.Errorf("sending: %w", err)
				return
			}
		}
		errc <- nil
	}()
	for range tputN {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, rd, err := c.NextReader()
		if err == nil {
			_, err = io.Copy(io.Discard, rd)
		}
		if err != nil {
			return fmt.Errorf("relay throughput %d B through %s: %w", size, ep.name, err)
		}
		<-sem
	}
	res.tputTime += time.Since(t0)
	res.bytes += int64(tputN) * int64(size)
	if err := <-errc; err != nil {
		return fmt.Errorf("relay throughput %d B through %s: %w", size, ep.name, err)
	}
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	return nil
}

// ---- 3b. many sessions ----

type sessionsResult struct {
	sessions         int
	rssBaseKiB       int64 // hop RSS with one warm session, before the many open
	rssIdleKiB       int64 // with every session open and idle
	rssLoadKiB       int64 // at the end of the loaded phase
	hwmKiB           int64
	cpu              float64 // hop CPU seconds over the loaded phase
	loadDur          time.Duration
	msgs             int
	rtt              []time.Duration
	errs             int
	firstErr         error
	openErrs         int
	firstOpenErr     error
	sessionsWithLoad int
}

func (r *sessionsResult) perSessionKiB() float64 {
	return float64(r.rssIdleKiB-r.rssBaseKiB) / float64(r.sessions)
}

func (e *env) runSessions(ctx context.Context, peers []string) (map[string]*sessionsResult, error) {
	out := map[string]*sessionsResult{}
	// One peer at a time (fresh process each) so one peer's sessions never
	// share the cores with another's.
	for _, p := range peers {
		res, err := e.sessionsFor(ctx, p)
		if err != nil {
			return nil, err
		}
		out[p] = res
		log.Printf("sessions: %s done", p)
	}
	return out, nil
}

func (e *env) sessionsFor(ctx context.Context, name string) (*sessionsResult, error) {
	ep, err := e.start(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	defer ep.stop()
	n := e.cfg.counts.sessions
	res := &sessionsResult{sessions: n}
	msg := relayMsg(1<<10, "s")
	warm, err := dialWS(ctx, ep)
	if err != nil {
		return nil, err
	}
	for range 20 {
		if err := roundTrip(warm, msg); err != nil {
			_ = warm.Close()
			return nil, fmt.Errorf("sessions warm-up through %s: %w", name, err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	res.rssBaseKiB = memIfHop(ep, "VmRSS")

	conns := make([]*websocket.Conn, n)
	defer func() {
		_ = warm.Close()
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		limit = make(chan struct{}, 32)
	)
	for i := range n {
		wg.Add(1)
		limit <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-limit }()
			c, err := dialWS(ctx, ep)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.openErrs++
				if res.firstOpenErr == nil {
					res.firstOpenErr = err
				}
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if res.openErrs > 0 {
		return nil, fmt.Errorf("opening %d sessions through %s: %d failed, first: %w", n, name, res.openErrs, res.firstOpenErr)
	}
	// Let the hop settle (dial buffers freed, GC) before reading idle RSS.
	time.Sleep(time.Second)
	res.rssIdleKiB = memIfHop(ep, "VmRSS")

	// Loaded phase: every session sends one message every 125 ms (fal-js's
	// 128 ms throttle) and waits for its echo.
	const every = 125 * time.Millisecond
	cpu0 := hopCPU(ep)
	t0 := time.Now()
	end := t0.Add(e.cfg.counts.sessionDur)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the sessions over the interval as real clients are.
			time.Sleep(time.Duration(i) * every / time.Duration(n))
			tk := time.NewTicker(every)
			defer tk.Stop()
			var rtt []time.Duration
			var errs int
			var firstErr error
			for time.Now().Before(end) && ctx.Err() == nil {
				t := time.Now()
				if err := roundTrip(c, msg); err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					break
				}
				rtt = append(rtt, time.Since(t))
				<-tk.C
			}
			mu.Lock()
			res.rtt = append(res.rtt, rtt...)
			res.msgs += len(rtt)
			res.errs += errs
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
			if len(rtt) > 0 {
				res.sessionsWithLoad++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.loadDur = time.Since(t0)
	res.cpu = hopCPU(ep) - cpu0
	res.rssLoadKiB = memIfHop(ep, "VmRSS")
	res.hwmKiB = memIfHop(ep, "VmHWM")
	e.ff.ResetCalls()
	return res, nil
}

// ---- 4. tokens ----

type tokenResult struct {
	res           loadResult
	upstreamCalls int
	// serial is one caller asking in a loop: the service time, which the
	// 200-caller run cannot show (there, by Little's law, the mean latency
	// is at least callers / throughput).
	serial loadResult
}

func (e *env) runTokens(ctx context.Context, peers []string) (map[string]*tokenResult, error) {
	eps, err := e.startAll(ctx, peers)
	if err != nil {
		return nil, err
	}
	defer stopEndpoints(eps)
	out := map[string]*tokenResult{}
	for _, p := range peers {
		ep := eps[p]
		e.ff.ResetCalls()
		lr := runLoad(ctx, e.cfg.counts.tokenCallers, 0, e.cfg.counts.tokenReqs, func() error { return do(ep.client, ep.token()) })
		out[p] = &tokenResult{res: lr, upstreamCalls: e.ff.CountCalls(fakefal.HostRest, "/tokens/")}
		out[p].serial = runLoad(ctx, 1, 0, e.cfg.counts.tokenSerial, func() error { return do(ep.client, ep.token()) })
		e.ff.ResetCalls()
		ep.client.CloseIdleConnections()
		log.Printf("tokens: %s done", p)
	}
	return out, nil
}
