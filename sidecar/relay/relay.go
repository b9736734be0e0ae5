// Package relay serves GET /realtime/<app id>[/<path>]: it checks the app
// against the policy, dials fal's realtime WebSocket with a cached token the
// app never sees, and relays frames both ways, streaming each message from
// reader to writer (no whole-message copies) so back-pressure reaches the
// sender and idle relays stay small.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/falguard/falguard/sidecar/apierr"
	"github.com/falguard/falguard/sidecar/credentials"
	"github.com/falguard/falguard/sidecar/metrics"
	"github.com/falguard/falguard/sidecar/proxy"
	"github.com/falguard/falguard/sidecar/target"
	"github.com/falguard/falguard/sidecar/tokencache"
	"github.com/falguard/falguard/sidecar/upstream"
)

// Prefix is the route the relay serves.
const Prefix = "/realtime/"

// Timeouts (variables so tests can shorten them).
var (
	// CloseGrace is how long a relay waits for the far side to answer a
	// forwarded close frame before dropping both connections.
	CloseGrace = 5 * time.Second
	// WriteTimeout bounds one message write to a side that stopped reading.
	WriteTimeout = 60 * time.Second
	controlWait  = 5 * time.Second
)

// Relay is the realtime route.
type Relay struct {
	Creds    func() *credentials.Snapshot
	Resolver *upstream.Resolver
	Dialer   *websocket.Dialer
	Tokens   *tokencache.Cache
	Metrics  *metrics.Metrics
	Log      *slog.Logger
	// BufferPool is shared by the app-side connections' write buffers.
	BufferPool websocket.BufferPool

	mu      sync.Mutex
	active  map[*session]struct{}
	idle    chan struct{} // closed whenever active is empty
	closing bool
}

type session struct {
	app, up *websocket.Conn
	once    sync.Once
}

// ServeHTTP relays one realtime session.
func (rl *Relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	snap := rl.Creds()
	if snap == nil {
		apierr.Write(w, http.StatusServiceUnavailable, apierr.CodeNotReady, "the sidecar has not loaded its key and policy yet: check its logs")
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		apierr.Write(w, http.StatusBadRequest, apierr.CodeBadRequest, "this is fal's realtime WebSocket: connect with ws://…/realtime/<owner>/<alias>")
		return
	}
	if !proxy.OriginAllowed(snap.Policy, r.Header.Get("Origin")) {
		apierr.Write(w, http.StatusForbidden, apierr.CodeOriginNotAllowed, "this origin is not allowed: add it to the FalCredential's proxy.allowedOrigins")
		return
	}
	id := strings.TrimPrefix(r.URL.Path, Prefix)
	segs := strings.Split(strings.TrimSuffix(id, "/"), "/")
	_, _, alias, rest, ok := target.AppID(segs)
	if r.URL.RawPath != "" || !ok || !target.ValidSegments(segs) {
		apierr.Write(w, http.StatusBadRequest, apierr.CodeBadRequest, "path must be /realtime/<owner>/<alias>[/<path>] with plain segments")
		return
	}
	// The policy is checked against the app id as the app gave it; the
	// "/realtime" path fal-js adds by default is not part of the app.
	id = strings.Join(segs, "/")
	if len(segs) == 1 { // legacy "123-lcm" id
		id = strings.Replace(segs[0], "-", "/", 1)
	}
	endpoint := id
	if len(rest) == 0 {
		endpoint += "/realtime"
	}
	app, ok := snap.Policy.MatchEndpoint(id)
	if !ok {
		apierr.Write(w, http.StatusForbidden, apierr.CodeAppNotAllowed,
			fmt.Sprintf("app %q is not in this credential's allowedApps: add it to the FalCredential", id))
		return
	}
	rl.Metrics.AppRequests.WithLabelValues(app).Inc()
	if !proxy.RateLimit(w, snap, rl.Metrics) { // a new session is a request to fal; its messages are not
		rl.Metrics.AppErrors.WithLabelValues(app).Inc()
		return
	}
	q := r.URL.Query()
	q.Del("fal_jwt_token") // the sidecar's token, never the app's

	// Dial on a short-lived goroutine: the TLS handshake's deep stack then
	// goes away with it instead of staying with this long-lived one.
	type dialed struct {
		up   *websocket.Conn
		resp *http.Response
		err  error
	}
	dc := make(chan dialed, 1)
	go func() {
		up, resp, err := rl.dial(r, snap, alias, endpoint, q) //nolint:bodyclose // dial has closed the handshake body
		dc <- dialed{up, resp, err}
	}()
	d := <-dc
	up, resp, err := d.up, d.resp, d.err
	if err != nil {
		rl.Metrics.AppErrors.WithLabelValues(app).Inc()
		if r.Context().Err() == nil {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			rl.Log.Warn("realtime dial failed", "app", app, "status", status, "error", strings.ReplaceAll(err.Error(), snap.Secret(), "***"))
		}
		rl.writeDialError(w, r, resp, err, snap)
		return
	}
	var hdr http.Header
	if p := up.Subprotocol(); p != "" {
		hdr = http.Header{"Sec-Websocket-Protocol": {p}}
	}
	upg := websocket.Upgrader{
		// 0: reuse net/http's 4 KiB read buffer instead of a second one.
		ReadBufferSize:  0,
		WriteBufferSize: 64 << 10, // pooled: held only while writing (see upstream.NewDialer)
		WriteBufferPool: rl.BufferPool,
		CheckOrigin:     func(*http.Request) bool { return true }, // checked above against the policy
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			apierr.Write(w, status, apierr.CodeBadRequest, "WebSocket upgrade failed: "+reason.Error())
		},
	}
	appConn, err := upg.Upgrade(w, r, hdr)
	if err != nil {
		_ = up.Close()
		return
	}
	s := &session{app: appConn, up: up}
	if !rl.track(s) {
		s.close(websocket.CloseGoingAway, "sidecar shutting down")
		return
	}
	defer rl.untrack(s)
	rl.Metrics.RealtimeOpen.Inc()
	defer rl.Metrics.RealtimeOpen.Dec()
	if abnormal := rl.pump(s, snap.Policy.MaxRequestBytes); abnormal {
		rl.Metrics.AppErrors.WithLabelValues(app).Inc()
	}
}

// dial opens fal's socket; a 401/403 handshake (token refused, e.g. minted
// by a key revoked since) drops the cached token and tries once more.
func (rl *Relay) dial(r *http.Request, snap *credentials.Snapshot, alias, endpoint string, q url.Values) (*websocket.Conn, *http.Response, error) {
	ttl := time.Duration(snap.Policy.TokenTTLSeconds) * time.Second
	d := *rl.Dialer
	d.Subprotocols = websocket.Subprotocols(r)
	h := http.Header{"Host": {target.HostRun}} // the canonical host, also when overridden
	if ua := r.Header.Get("User-Agent"); ua != "" {
		h.Set("User-Agent", ua)
	}
	for attempt := 0; ; attempt++ {
		tok, err := rl.Tokens.Get(r.Context(), alias, ttl)
		if err != nil {
			return nil, nil, &tokenErr{err}
		}
		rq := "fal_jwt_token=" + url.QueryEscape(tok.Value)
		if enc := q.Encode(); enc != "" {
			rq += "&" + enc
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(r.Context(), d.HandshakeTimeout)
		conn, resp, err := d.DialContext(ctx, rl.Resolver.WSURL(target.HostRun, "/"+endpoint, rq), h)
		cancel()
		rl.Metrics.UpstreamLatency.WithLabelValues(target.HostRun).Observe(time.Since(start).Seconds())
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err == nil {
			return conn, resp, nil
		}
		if attempt == 0 && resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			rl.Tokens.Invalidate(alias, tok.Value)
			continue
		}
		return nil, resp, err
	}
}

type tokenErr struct{ error }

func (rl *Relay) writeDialError(w http.ResponseWriter, r *http.Request, resp *http.Response, err error, snap *credentials.Snapshot) {
	var te *tokenErr
	switch {
	case r.Context().Err() != nil:
	case errors.As(err, &te):
		proxy.WriteTokenError(w, te.error, snap.Secret())
	case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		apierr.Write(w, http.StatusTooManyRequests, apierr.CodeUpstreamRateLimit, "fal is rate limiting realtime connections: retry after the Retry-After delay")
	case resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden):
		apierr.Write(w, http.StatusBadGateway, apierr.CodeUpstreamKeyRefused,
			fmt.Sprintf("fal refused the realtime token (HTTP %d): check the FalCredential's key", resp.StatusCode))
	case resp != nil && resp.StatusCode == http.StatusNotFound:
		apierr.Write(w, http.StatusNotFound, apierr.CodeNotFound, "fal has no realtime endpoint at this path")
	case resp != nil:
		w.Header().Set("Retry-After", "1")
		apierr.Write(w, http.StatusBadGateway, apierr.CodeUpstreamUnavail, fmt.Sprintf("fal answered the realtime handshake with HTTP %d", resp.StatusCode))
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			apierr.Write(w, http.StatusGatewayTimeout, apierr.CodeUpstreamTimeout, "fal's realtime endpoint did not answer in time: retry later")
			return
		}
		w.Header().Set("Retry-After", "1")
		apierr.Write(w, http.StatusBadGateway, apierr.CodeUpstreamUnavail, "cannot reach fal's realtime endpoint: "+err.Error())
	}
}

// pump relays until both directions end. It reports whether the session
// ended abnormally (a dropped connection rather than a close handshake).
func (rl *Relay) pump(s *session, limit int64) bool {
	for _, c := range []*websocket.Conn{s.app, s.up} {
		c.SetReadLimit(limit)
		// Close frames are forwarded to the other side, whose answer
		// completes the handshake, instead of being echoed here.
		c.SetCloseHandler(func(int, string) error { return nil })
	}
	forwardControl(s.app, s.up)
	forwardControl(s.up, s.app)

	// One extra goroutine per relay; fal->app runs on the handler's own.
	// Whichever direction ends first has forwarded its close (or a code the
	// other side can act on); the other side then gets CloseGrace to answer
	// before both connections are dropped.
	var once sync.Once
	var grace *time.Timer
	startGrace := func() {
		once.Do(func() {
			grace = time.AfterFunc(CloseGrace, s.drop)
		})
	}
	done := make(chan bool, 1)
	go func() {
		ab := rl.copy(s.up, s.app, metrics.AppToFal)
		startGrace()
		done <- ab
	}()
	abnormal := rl.copy(s.app, s.up, metrics.FalToApp)
	startGrace()
	abnormal = <-done || abnormal
	grace.Stop()
	_ = s.app.Close()
	_ = s.up.Close()
	return abnormal
}

// forwardControl passes pings from src to dst and dst's pongs back, so
// liveness checks work end to end.
func forwardControl(src, dst *websocket.Conn) {
	src.SetPingHandler(func(data string) error {
		err := dst.WriteControl(websocket.PingMessage, []byte(data), time.Now().Add(controlWait))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	dst.SetPongHandler(func(data string) error {
		err := src.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(controlWait))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
}

// copy relays messages from src to dst until src ends, then forwards the
// close (or a code the far side can act on). It reports an abnormal end.
func (rl *Relay) copy(dst, src *websocket.Conn, dir string) bool {
	bytes := rl.Metrics.RelayedBytes.WithLabelValues(dir)
	msgs := rl.Metrics.RelayedMessages.WithLabelValues(dir)
	for {
		mt, r, err := src.NextReader()
		if err != nil {
			code, reason, abnormal := closeFor(err, dir)
			_ = dst.WriteControl(websocket.CloseMessage, formatClose(code, reason), time.Now().Add(controlWait))
			return abnormal
		}
		_ = dst.SetWriteDeadline(time.Now().Add(WriteTimeout))
		w, err := dst.NextWriter(mt)
		if err != nil {
			_ = src.WriteControl(websocket.CloseMessage, formatClose(websocket.CloseGoingAway, "peer gone"), time.Now().Add(controlWait))
			return true
		}
		n, err := io.Copy(w, r) // the writer's ReadFrom fills frames straight from the reader
		bytes.Add(float64(n))
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			code, reason, _ := closeFor(err, dir)
			if errors.Is(err, websocket.ErrReadLimit) {
				code, reason = websocket.CloseMessageTooBig, "message exceeds maxRequestBytes"
			}
			_ = dst.WriteControl(websocket.CloseMessage, formatClose(code, reason), time.Now().Add(controlWait))
			return true
		}
		msgs.Inc()
	}
}

// closeFor picks the close to forward when reading from one side ended.
func closeFor(err error, dir string) (int, string, bool) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		switch ce.Code {
		case websocket.CloseNoStatusReceived:
			return websocket.CloseNoStatusReceived, "", false
		case websocket.CloseAbnormalClosure, websocket.CloseTLSHandshake:
		default:
			return ce.Code, ce.Text, false
		}
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		return websocket.CloseMessageTooBig, "message exceeds maxRequestBytes", true
	}
	if dir == metrics.FalToApp {
		return websocket.CloseInternalServerErr, "fal connection lost", true
	}
	return websocket.CloseGoingAway, "app connection lost", true
}

// formatClose builds a close payload; 1005 means "no status" and is sent as
// an empty close frame.
func formatClose(code int, reason string) []byte {
	if code == websocket.CloseNoStatusReceived {
		return []byte{}
	}
	if len(reason) > 123 { // a control frame payload is at most 125 bytes
		reason = reason[:123]
	}
	return websocket.FormatCloseMessage(code, reason)
}

func (rl *Relay) track(s *session) bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.closing {
		return false
	}
	if len(rl.active) == 0 {
		if rl.active == nil {
			rl.active = map[*session]struct{}{}
		}
		rl.idle = make(chan struct{})
	}
	rl.active[s] = struct{}{}
	return true
}

func (rl *Relay) untrack(s *session) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	delete(rl.active, s)
	if len(rl.active) == 0 {
		close(rl.idle)
	}
}

// Open is the number of relays in progress.
func (rl *Relay) Open() int {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return len(rl.active)
}

// Wait blocks until no relay is open or ctx is done.
func (rl *Relay) Wait(ctx context.Context) error {
	rl.mu.Lock()
	if len(rl.active) == 0 {
		rl.mu.Unlock()
		return nil
	}
	idle := rl.idle
	rl.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CloseAll sends code/reason (1001 at shutdown) to both sides of every open
// relay; the pumps then finish the handshakes or drop after CloseGrace.
// Relays opened afterwards are refused.
func (rl *Relay) CloseAll(code int, reason string) {
	rl.mu.Lock()
	rl.closing = true
	sessions := make([]*session, 0, len(rl.active))
	for s := range rl.active {
		sessions = append(sessions, s)
	}
	rl.mu.Unlock()
	for _, s := range sessions {
		s.close(code, reason)
	}
}

func (s *session) close(code int, reason string) {
	s.once.Do(func() {
		msg := formatClose(code, reason)
		deadline := time.Now().Add(controlWait)
		_ = s.app.WriteControl(websocket.CloseMessage, msg, deadline)
		_ = s.up.WriteControl(websocket.CloseMessage, msg, deadline)
		// The pumps see both answers (or time out) and tear down.
		time.AfterFunc(CloseGrace, s.drop)
	})
}

// drop closes both sockets without a close handshake.
func (s *session) drop() {
	_ = s.app.NetConn().Close()
	_ = s.up.NetConn().Close()
}
