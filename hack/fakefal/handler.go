package fakefal

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type ctxKey struct{}

// recorder captures the status of one request and records the call once,
// as the status line goes out (or at the hijack of a WebSocket upgrade), so
// a client that has seen the answer always finds the call in Calls().
type recorder struct {
	http.ResponseWriter
	s      *Server
	call   Call
	status int
	once   sync.Once
}

func (rw *recorder) WriteHeader(code int) {
	if rw.status == 0 {
		rw.status = code
		rw.finish(code)
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *recorder) Write(b []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriter.Write(b)
}

func (rw *recorder) Flush() {
	if f, ok := rw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack lets gorilla/websocket upgrade (recorded as 101: the upgrader
// hijacks only once the handshake is accepted) and the Drop fault close the
// socket (recorded as 0 before it hijacks).
func (rw *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := rw.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("fakefal: connection cannot be hijacked")
	}
	rw.finish(http.StatusSwitchingProtocols)
	return h.Hijack()
}

func (rw *recorder) finish(status int) {
	rw.once.Do(func() {
		rw.call.Status = status
		rw.s.record(rw.call)
	})
}

func recFrom(r *http.Request) *recorder {
	rec, _ := r.Context().Value(ctxKey{}).(*recorder)
	return rec
}

func (s *Server) hostHandler(host string) http.Handler {
	var route http.HandlerFunc
	switch host {
	case HostRun:
		route = s.serveRun
	case HostQueue:
		route = s.serveQueue
	case HostRest, HostRestAlpha:
		route = s.serveRest
	case HostAPI:
		route = s.servePlatform
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w, s: s, call: Call{
			Host: host, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Time: time.Now().UTC(),
			Header: withoutAuthorization(r.Header),
		}}
		defer func() {
			st := rec.status
			if st == 0 {
				st = http.StatusOK
			}
			rec.finish(st)
		}()
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, rec))
		// Attribute the call before a fault answers it, so a test can see
		// which key a retried or refused request carried.
		rec.call.KeyID = s.identify(r)
		if s.applyHTTPFaults(rec, r, host) {
			return
		}
		route(rec, r)
	})
}

func withoutAuthorization(h http.Header) http.Header {
	c := h.Clone()
	c.Del("Authorization")
	return c
}

// applyHTTPFaults reports whether a fault answered the request.
func (s *Server) applyHTTPFaults(rec *recorder, r *http.Request, host string) bool {
	faults := s.takeFaults(host, r.URL.Path, Fault.hasHTTP)
	var delay time.Duration
	for _, f := range faults {
		delay += f.Latency
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			rec.finish(0)
			return true
		}
	}
	for _, f := range faults {
		switch {
		case f.Drop:
			rec.finish(0)
			if conn, _, err := rec.Hijack(); err == nil {
				if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
					// Reset rather than a TLS close_notify: the peer sees the
					// connection vanish as it would on a crashed upstream.
					if tcp, ok := tc.NetConn().(*net.TCPConn); ok {
						_ = tcp.SetLinger(0)
					}
				}
				_ = conn.Close()
			}
			return true
		case f.Status != 0:
			if f.RetryAfter != "" {
				rec.Header().Set("Retry-After", f.RetryAfter)
			}
			body := f.Body
			if body == "" {
				body = fmt.Sprintf(`{"detail":"fakefal injected fault: %s"}`, http.StatusText(f.Status))
			}
			if json.Valid([]byte(body)) {
				rec.Header().Set("Content-Type", "application/json")
			} else {
				rec.Header().Set("Content-Type", "text/plain; charset=utf-8")
			}
			rec.WriteHeader(f.Status)
			_, _ = rec.Write([]byte(body))
			return true
		}
	}
	return false
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeDetail answers the way fal's FastAPI services do: {"detail": msg}.
func writeDetail(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"detail": msg})
}

// tokenClaims are the claims of the JWTs fakefal mints.
type tokenClaims struct {
	AllowedApps []string `json:"allowed_apps"`
	KeyID       string   `json:"fal_key_id"`
	jwt.RegisteredClaims
}

type authResult struct {
	keyID string
	admin bool
	jwt   *tokenClaims // set when a JWT authenticated the call
}

// authenticate checks `Authorization: Key id:secret`, or, when allowJWT, a
// fakefal JWT in `Authorization: Bearer` or the fal_jwt_token query
// parameter. On failure it has answered 401 and returns false.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, host string, allowJWT bool) (authResult, bool) {
	var res authResult
	authz := r.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(authz, " ")
	tok := r.URL.Query().Get("fal_jwt_token")
	switch {
	case strings.EqualFold(scheme, "key") && cred != "":
		id, admin, ok := s.checkKey(strings.TrimSpace(cred))
		if !ok {
			writeDetail(w, http.StatusUnauthorized, "No user found for Key ID and Secret")
			return res, false
		}
		res.keyID, res.admin = id, admin
	case allowJWT && (strings.EqualFold(scheme, "bearer") && cred != "" || tok != ""):
		if tok == "" {
			tok = strings.TrimSpace(cred)
		}
		claims, err := s.parseJWT(tok)
		if err != nil {
			writeDetail(w, http.StatusUnauthorized, "Invalid token: "+err.Error())
			return res, false
		}
		res.keyID, res.jwt = claims.KeyID, claims
	case authz == "":
		writeDetail(w, http.StatusUnauthorized, "Authorization header is required")
		return res, false
	default:
		writeDetail(w, http.StatusUnauthorized, "Unsupported authorization scheme; use 'Key <key_id>:<key_secret>'")
		return res, false
	}
	if rec := recFrom(r); rec != nil {
		rec.call.KeyID = res.keyID
	}
	if len(s.takeFaults(host, r.URL.Path, func(f Fault) bool { return f.RefuseKeyID != "" && f.RefuseKeyID == res.keyID })) > 0 {
		writeDetail(w, http.StatusUnauthorized, "No user found for Key ID and Secret")
		return res, false
	}
	return res, true
}

// identify returns the key id behind valid credentials on r, or "".
func (s *Server) identify(r *http.Request) string {
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if strings.EqualFold(scheme, "key") {
		id, _, _ := s.checkKey(strings.TrimSpace(cred))
		return id
	}
	tok := r.URL.Query().Get("fal_jwt_token")
	if tok == "" && strings.EqualFold(scheme, "bearer") {
		tok = strings.TrimSpace(cred)
	}
	if tok != "" {
		if c, err := s.parseJWT(tok); err == nil {
			return c.KeyID
		}
	}
	return ""
}

// parseJWT verifies a fakefal JWT: signature, expiry, and that the key that
// minted it is still live.
func (s *Server) parseJWT(tok string) (*tokenClaims, error) {
	claims := &tokenClaims{}
	_, err := jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return s.jwtKey, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired())
	if err != nil {
		return nil, errors.New("signature or expiry check failed")
	}
	if !s.keyLive(claims.KeyID) {
		return nil, errors.New("the key that minted this token was revoked")
	}
	return claims, nil
}

// appRef is an endpoint id parsed the way fal's clients parse it.
type appRef struct {
	namespace, owner, alias, path string
}

func (a appRef) id() string {
	id := a.owner + "/" + a.alias
	if a.namespace != "" {
		id = a.namespace + "/" + id
	}
	return id
}

// parseApp splits /[namespace/]owner/alias[/path] (namespaces: workflows, comfy).
func parseApp(path string) (appRef, bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	var a appRef
	if len(parts) > 0 && (parts[0] == "workflows" || parts[0] == "comfy") {
		a.namespace, parts = parts[0], parts[1:]
	}
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		return a, false
	}
	a.owner, a.alias = parts[0], parts[1]
	a.path = strings.Join(parts[2:], "/")
	return a, true
}
