// Package server wires the sidecar together: the app API listener (proxy,
// token, realtime relay) guarded against non-loopback Hosts and capped in
// connections, the ops listener, credential reloads, and graceful shutdown.
package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/falguard/falguard/sidecar/apierr"
	"github.com/falguard/falguard/sidecar/credentials"
	"github.com/falguard/falguard/sidecar/metrics"
	"github.com/falguard/falguard/sidecar/ops"
	"github.com/falguard/falguard/sidecar/proxy"
	"github.com/falguard/falguard/sidecar/relay"
	"github.com/falguard/falguard/sidecar/target"
	"github.com/falguard/falguard/sidecar/tokencache"
	"github.com/falguard/falguard/sidecar/upstream"
)

// Config is everything the run command takes.
type Config struct {
	Listen           string
	OpsListen        string
	AllowNonLoopback bool
	CredentialsDir   string
	KeyEnv           string
	AllowedApps      []string
	PolicyFile       string
	UpstreamOverride []string
	UpstreamCAFile   string
	MinShutdownDelay time.Duration
	MaxShutdownDelay time.Duration
	MaxConnections   int
	Version          string
	Logger           *slog.Logger
	// ReloadInterval is how often the credentials are polled (default 1s).
	ReloadInterval time.Duration
	// Getenv reads the --key-env variable (os.Getenv if nil).
	Getenv func(string) string
}

// Server is a configured, listening sidecar.
type Server struct {
	cfg      Config
	log      *slog.Logger
	metrics  *metrics.Metrics
	creds    *credentials.Store
	tokens   *tokencache.Cache
	relay    *relay.Relay
	state    *ops.State
	inflight atomic.Int64

	appLn, opsLn   net.Listener
	appSrv, opsSrv *http.Server
	quit           chan struct{}
	quitOnce       sync.Once
}

// CheckListen refuses an app listener that is not on loopback unless allowed.
func CheckListen(addr string, allowNonLoopback bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: want host:port: %w", addr, err)
	}
	if allowNonLoopback || isLoopbackName(host) {
		return nil
	}
	return fmt.Errorf("--listen %q is not a loopback address: the app API hands out the use of a fal key, so it listens on 127.0.0.1 only; pass --allow-non-loopback if you really mean it", addr)
}

func isLoopbackName(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// New validates cfg, builds every part and binds both listeners.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxConnections <= 0 {
		return nil, fmt.Errorf("--max-connections must be positive, got %d", cfg.MaxConnections)
	}
	if cfg.MinShutdownDelay < 0 || cfg.MaxShutdownDelay < 0 {
		return nil, errors.New("--min-shutdown-delay and --max-shutdown-delay must not be negative")
	}
	if err := CheckListen(cfg.Listen, cfg.AllowNonLoopback); err != nil {
		return nil, err
	}
	res, err := upstream.NewResolver(cfg.UpstreamOverride)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := upstream.TLSConfig(cfg.UpstreamCAFile)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: metrics.New(cfg.Version), quit: make(chan struct{})}
	s.creds, err = credentials.New(credentials.Options{
		Dir: cfg.CredentialsDir, KeyEnv: cfg.KeyEnv, AllowedApps: cfg.AllowedApps, PolicyFile: cfg.PolicyFile,
		Interval: cfg.ReloadInterval, Logger: cfg.Logger, Getenv: cfg.Getenv,
		OnReload: s.metrics.Reloads.Inc, OnReloadError: s.metrics.ReloadErrors.Inc,
	})
	if err != nil {
		return nil, err
	}
	transport := upstream.NewTransport(tlsCfg)
	ua := "falguard-sidecar/" + cfg.Version
	minter := &tokencache.Minter{
		Transport: transport,
		URL:       res.URL(target.HostRest, "/tokens/", ""),
		Key:       func() string { return s.creds.Current().Key() },
		UserAgent: ua,
		Observe:   func(d time.Duration) { s.metrics.UpstreamLatency.WithLabelValues(target.HostRest).Observe(d.Seconds()) },
	}
	s.tokens = tokencache.New(minter.Mint, tokencache.Counters{
		Hit: s.metrics.TokenHits.Inc, Miss: s.metrics.TokenMisses.Inc,
		Refresh: s.metrics.TokenRefreshes.Inc, Error: s.metrics.TokenErrors.Inc,
	})
	s.creds.OnChange(func(old, new *credentials.Snapshot) {
		if old != nil && old.Key() != new.Key() {
			s.tokens.Flush() // tokens minted by the old key may be revoked with it
		}
		s.state.SetStarted()
	})
	s.state = ops.NewState(func() bool { return s.inflight.Load() >= int64(cfg.MaxConnections) })
	ph := &proxy.Handler{Creds: s.creds.Current, Resolver: res, Transport: transport, Tokens: s.tokens,
		Metrics: s.metrics, Log: cfg.Logger, Version: cfg.Version}
	pool := &sync.Pool{}
	s.relay = &relay.Relay{Creds: s.creds.Current, Resolver: res, Dialer: upstream.NewDialer(tlsCfg, pool),
		Tokens: s.tokens, Metrics: s.metrics, Log: cfg.Logger, BufferPool: pool}

	mux := http.NewServeMux()
	mux.HandleFunc("/api/fal/proxy", ph.ServeProxy)
	mux.HandleFunc("/api/fal/token", ph.ServeToken)
	mux.Handle(relay.Prefix, s.relay)
	mux.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			apierr.Write(w, http.StatusMethodNotAllowed, apierr.CodeMethodNotAllowed, "use POST /quitquitquit")
			return
		}
		if !ops.FromLoopback(r) { // matters only with --allow-non-loopback
			apierr.Write(w, http.StatusForbidden, apierr.CodeHostNotLoopback, "quitquitquit is accepted only from inside the pod (127.0.0.1)")
			return
		}
		s.Quit()
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("shutting down\n"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apierr.Write(w, http.StatusNotFound, apierr.CodeNotFound, "no such route: use /api/fal/proxy, /api/fal/token or /realtime/<app>")
	})

	s.appSrv = &http.Server{Handler: s.wrap(mux), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)}
	s.opsSrv = &http.Server{Handler: ops.Handler(s.state, s.metrics.Registry, s.Quit), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)}
	var lc net.ListenConfig
	if s.appLn, err = lc.Listen(context.Background(), "tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	if s.opsLn, err = lc.Listen(context.Background(), "tcp", cfg.OpsListen); err != nil {
		_ = s.appLn.Close()
		return nil, fmt.Errorf("--ops-listen: %w", err)
	}
	return s, nil
}

// AppAddr and OpsAddr are the bound addresses (useful with port 0).
func (s *Server) AppAddr() string { return s.appLn.Addr().String() }

// OpsAddr is the bound ops address.
func (s *Server) OpsAddr() string { return s.opsLn.Addr().String() }

// Metrics exposes the registry (tests).
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// Quit starts shutdown without the minimum delay (POST /quitquitquit: the
// app says it is done).
func (s *Server) Quit() { s.quitOnce.Do(func() { close(s.quit) }) }

// Run serves until ctx ends (SIGTERM) or Quit, then shuts down gracefully:
// readiness goes false, serving continues for MinShutdownDelay (not after
// Quit), in-flight requests and relays get up to MaxShutdownDelay, and relays
// still open are closed with 1001.
func (s *Server) Run(ctx context.Context) error {
	credCtx, stopCreds := context.WithCancel(context.Background())
	credDone := make(chan struct{})
	go func() { s.creds.Run(credCtx); close(credDone) }()
	defer func() { stopCreds(); <-credDone }()

	errc := make(chan error, 2)
	go func() { errc <- s.appSrv.Serve(s.appLn) }()
	go func() { errc <- s.opsSrv.Serve(s.opsLn) }()
	s.log.Info("falguard-sidecar serving", "version", s.cfg.Version, "listen", s.AppAddr(), "opsListen", s.OpsAddr())

	quitting := false
	select {
	case <-ctx.Done():
	case <-s.quit:
		quitting = true
	case err := <-errc:
		_ = s.appSrv.Close()
		_ = s.opsSrv.Close()
		return fmt.Errorf("serving: %w", err)
	}
	s.state.SetDraining()
	s.log.Info("shutting down", "minDelay", s.cfg.MinShutdownDelay.String(), "maxDelay", s.cfg.MaxShutdownDelay.String(), "quit", quitting)
	if !quitting && s.cfg.MinShutdownDelay > 0 {
		t := time.NewTimer(s.cfg.MinShutdownDelay)
		select {
		case <-t.C:
		case <-s.quit: // an explicit quit cuts the wait short
			t.Stop()
		}
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), s.cfg.MaxShutdownDelay)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = s.appSrv.Shutdown(drainCtx) }()
	go func() { defer wg.Done(); _ = s.relay.Wait(drainCtx) }()
	wg.Wait()
	open := s.relay.Open()
	s.relay.CloseAll(websocket.CloseGoingAway, "sidecar shutting down")
	_ = s.appSrv.Close()
	closeCtx, cancelClose := context.WithTimeout(context.Background(), relay.CloseGrace+time.Second)
	_ = s.relay.Wait(closeCtx)
	cancelClose()
	opsCtx, cancelOps := context.WithTimeout(context.Background(), time.Second)
	_ = s.opsSrv.Shutdown(opsCtx)
	cancelOps()
	_ = s.opsSrv.Close()
	s.log.Info("stopped", "relaysClosedAtDeadline", open)
	return nil
}

// wrap adds the Host guard, the connection cap and request metrics.
func (s *Server) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route := routeOf(r.URL.Path)
		sw := &statusWriter{ResponseWriter: w}
		start := time.Now()
		defer func() {
			code := sw.status
			if code == 0 {
				code = 499 // the app went away before any answer
			}
			s.metrics.Requests.WithLabelValues(route, fmt.Sprint(code)).Inc()
			s.log.Debug("request", "method", r.Method, "route", route, "status", code, "duration", time.Since(start).String())
		}()
		if !s.cfg.AllowNonLoopback {
			host, _, err := net.SplitHostPort(r.Host)
			if err != nil {
				host = r.Host
			}
			if !isLoopbackName(host) {
				apierr.Write(sw, http.StatusForbidden, apierr.CodeHostNotLoopback,
					"Host header must be a loopback name (127.0.0.1, localhost, [::1]): requests for other hosts are refused to stop DNS rebinding")
				return
			}
		}
		n := s.inflight.Add(1)
		s.metrics.Inflight.Set(float64(n))
		defer func() { s.metrics.Inflight.Set(float64(s.inflight.Add(-1))) }()
		if n > int64(s.cfg.MaxConnections) {
			sw.Header().Set("Retry-After", "1")
			apierr.Write(sw, http.StatusServiceUnavailable, apierr.CodeTooManyConnections,
				fmt.Sprintf("the sidecar is at --max-connections (%d): retry shortly", s.cfg.MaxConnections))
			return
		}
		next.ServeHTTP(sw, r)
	})
}

func routeOf(p string) string {
	switch {
	case p == "/api/fal/proxy":
		return "proxy"
	case p == "/api/fal/token":
		return "token"
	case strings.HasPrefix(p, relay.Prefix):
		return "realtime"
	case p == "/quitquitquit":
		return "quitquitquit"
	}
	return "other"
}

// statusWriter records the status; Flush, Hijack and Unwrap keep streaming
// and WebSocket upgrades working through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
