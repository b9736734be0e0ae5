// Package proxy serves the app API's HTTP routes: /api/fal/proxy (wire
// compatible with fal's server proxy) and /api/fal/token (fal's documented
// tokenProvider shape).
package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/falguard/falguard/sidecar/apierr"
	"github.com/falguard/falguard/sidecar/credentials"
	"github.com/falguard/falguard/sidecar/metrics"
	"github.com/falguard/falguard/sidecar/redact"
	"github.com/falguard/falguard/sidecar/target"
	"github.com/falguard/falguard/sidecar/tokencache"
	"github.com/falguard/falguard/sidecar/upstream"
)

// Handler holds what the routes share.
type Handler struct {
	Creds     func() *credentials.Snapshot
	Resolver  *upstream.Resolver
	Transport http.RoundTripper
	Tokens    *tokencache.Cache
	Metrics   *metrics.Metrics
	Log       *slog.Logger
	Version   string
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Request headers passed to fal besides x-fal-*; everything else (cookies,
// the caller's Authorization, forwarding headers) stays behind.
var forwarded = []string{"Content-Type", "Content-Encoding", "Accept", "Accept-Encoding", "Accept-Language", "User-Agent", "X-App-Fal-Upload-Policy", "Idempotency-Key"}

// Response headers never copied back: hop-by-hop ones (RFC 9110 7.6.1).
var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

func (h *Handler) snapshot(w http.ResponseWriter) *credentials.Snapshot {
	s := h.Creds()
	if s == nil {
		apierr.Write(w, http.StatusServiceUnavailable, apierr.CodeNotReady, "the sidecar has not loaded its key and policy yet: check its logs")
	}
	return s
}

// ServeProxy is ANY /api/fal/proxy.
func (h *Handler) ServeProxy(w http.ResponseWriter, r *http.Request) {
	snap := h.snapshot(w)
	if snap == nil || !cors(w, r, snap.Policy) {
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
	default:
		apierr.Write(w, http.StatusMethodNotAllowed, apierr.CodeMethodNotAllowed, "method "+quoteASCII(r.Method)+" is not proxied to fal")
		return
	}
	t, rej := target.Validate(r.Header.Values(target.Header), snap.Policy)
	if rej != nil {
		apierr.Write(w, rej.Status, rej.Code, rej.Message)
		return
	}
	if t.App != "" {
		h.Metrics.AppRequests.WithLabelValues(t.App).Inc()
	}
	limit := snap.Policy.MaxRequestBytes
	if r.ContentLength > limit {
		h.appError(t)
		tooLarge(w, limit)
		return
	}
	if t.Kind == target.KindToken {
		h.serveProxiedToken(w, r, snap)
		return
	}
	if !RateLimit(w, snap, h.Metrics) {
		h.appError(t)
		return
	}

	// The upstream transport may still read the request body (to see its
	// EOF) after fal's answer has started to flow back; without full duplex
	// net/http would close the body under it as the first byte goes out.
	_ = http.NewResponseController(w).EnableFullDuplex()
	body := io.Reader(http.NoBody)
	length := r.ContentLength
	var cb *capped
	if length != 0 && r.Body != nil {
		cb = &capped{r: r.Body, left: limit}
		body = cb
	}
	if length < 0 && r.Body != nil {
		// No Content-Length: read a bounded prefix first, so a small
		// oversized body is refused before fal sees anything and a small
		// body goes out with a length. Only larger bodies are streamed
		// under the cap (fal then gets an aborted request, never a whole one).
		peek := make([]byte, min(limit+1, 32<<10))
		n, err := io.ReadFull(r.Body, peek)
		switch {
		case int64(n) > limit:
			h.appError(t)
			tooLarge(w, limit)
			return
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			body, length, cb = bytes.NewReader(peek[:n]), int64(n), nil
		case err != nil:
			return // the app went away mid-body
		default:
			cb.left -= int64(n)
			body = io.MultiReader(bytes.NewReader(peek[:n]), cb)
		}
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, h.Resolver.URL(t.Host, t.Path, t.RawQuery), body)
	if err != nil {
		apierr.Write(w, http.StatusBadRequest, apierr.CodeBadRequest, "cannot build the upstream request: "+err.Error())
		return
	}
	out.ContentLength = length
	out.Host = t.Host // upstream sees the canonical host, also when overridden
	for name, vals := range r.Header {
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, "x-fal-") && lower != "x-fal-target-url" && lower != "x-fal-client-proxy" {
			out.Header[name] = vals
		}
	}
	for _, name := range forwarded {
		if v, ok := r.Header[name]; ok {
			out.Header[name] = v
		}
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = nil // Go would add its own
	}
	out.Header.Set("Authorization", "Key "+snap.Key())
	out.Header.Set("X-Fal-Client-Proxy", "falguard/"+h.Version)

	start := time.Now()
	resp, err := h.Transport.RoundTrip(out)
	h.Metrics.UpstreamLatency.WithLabelValues(t.Host).Observe(time.Since(start).Seconds())
	if err != nil {
		h.appError(t)
		if r.Context().Err() == nil {
			h.Log.Warn("upstream request failed", "host", t.Host, "error", redact.String(err.Error(), snap.Secret()))
		}
		switch {
		case cb != nil && cb.left < 0:
			tooLarge(w, limit)
		case r.Context().Err() != nil:
			// The app went away; nobody is left to answer.
		case isTimeout(err):
			apierr.Write(w, http.StatusGatewayTimeout, apierr.CodeUpstreamTimeout, fmt.Sprintf("%s did not answer in time: retry later", t.Host))
		default:
			w.Header().Set("Retry-After", "1")
			apierr.Write(w, http.StatusBadGateway, apierr.CodeUpstreamUnavail, fmt.Sprintf("cannot reach %s: %v", t.Host, redact.String(err.Error(), snap.Secret())))
		}
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		h.appError(t)
	}
	secret := snap.Secret()
	dst := w.Header()
	for name, vals := range resp.Header {
		if hopByHop[name] {
			continue
		}
		clean := make([]string, len(vals))
		for i, v := range vals {
			clean[i] = redact.String(v, secret)
		}
		dst[name] = clean
	}
	w.WriteHeader(resp.StatusCode)
	if err := stream(w, resp.Body, secret); err != nil && r.Context().Err() == nil {
		// fal broke off mid-body. Abort the response so the app sees a
		// truncated stream, not a clean end it would take as complete.
		h.Log.Warn("upstream body ended early", "host", t.Host, "error", err.Error())
		panic(http.ErrAbortHandler)
	}
}

// stream copies an upstream body to the app, masking the key secret and
// flushing each chunk so SSE events arrive as fal sends them.
func stream(w http.ResponseWriter, body io.Reader, secret string) error {
	rc := http.NewResponseController(w)
	red := redact.NewWriter(w, secret)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			// The redactor holds back only bytes that could begin the
			// secret, so this flush delays nothing an SSE client waits for.
			if _, err := red.Write(buf[:n]); err != nil {
				return nil // the app went away
			}
			_ = rc.Flush()
		}
		if rerr == io.EOF {
			_ = red.Flush()
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

func (h *Handler) appError(t *target.Target) {
	if t != nil && t.App != "" {
		h.Metrics.AppErrors.WithLabelValues(t.App).Inc()
	}
}

// RateLimit applies the policy's rate limit to a request about to go to
// fal, answering 429 with Retry-After when it is exceeded.
func RateLimit(w http.ResponseWriter, snap *credentials.Snapshot, m *metrics.Metrics) bool {
	if snap.Limiter == nil {
		return true
	}
	res := snap.Limiter.Reserve()
	if res.OK() {
		d := res.Delay()
		if d == 0 {
			return true
		}
		res.Cancel()
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
	} else {
		w.Header().Set("Retry-After", "1")
	}
	m.RateLimited.Inc()
	apierr.Write(w, http.StatusTooManyRequests, apierr.CodeRateLimited,
		fmt.Sprintf("rate limit of %g requests/s (burst %d) exceeded: retry after the Retry-After delay",
			snap.Policy.RateLimit.RequestsPerSecond, snap.Policy.RateLimit.Burst))
	return false
}

func tooLarge(w http.ResponseWriter, limit int64) {
	w.Header().Set("Connection", "close") // the unread body would otherwise have to be drained
	apierr.Write(w, http.StatusRequestEntityTooLarge, apierr.CodeBodyTooLarge,
		fmt.Sprintf("request body is larger than maxRequestBytes (%d bytes): send less or raise the FalCredential's proxy.maxRequestBytes", limit))
}

// capped fails the upstream request once more than left bytes were read, so
// a body without Content-Length cannot exceed the cap either.
type capped struct {
	r    io.Reader
	left int64
}

var errCapExceeded = errors.New("request body exceeds maxRequestBytes")

func (c *capped) Read(p []byte) (int, error) {
	if c.left < 0 {
		return 0, errCapExceeded
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		return 0, errCapExceeded
	}
	return n, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
