// Package fakefal is a local stand-in for fal.ai used by tests, the demo and
// the benchmarks (never by the product). It serves every fal host the sidecar
// and the manager talk to over real TLS from its own CA, checks keys and JWTs
// the way fal does, records which key authenticated each call, and injects
// faults (latency, error statuses, dropped connections, WebSocket closes).
package fakefal

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// The fal hosts fakefal serves, each on its own TLS listener.
const (
	HostRun       = "fal.run"
	HostQueue     = "queue.fal.run"
	HostRest      = "rest.fal.ai"
	HostRestAlpha = "rest.alpha.fal.ai"
	HostAPI       = "api.fal.ai"
)

// Hosts lists every host fakefal serves, in a stable order.
var Hosts = []string{HostRun, HostQueue, HostRest, HostRestAlpha, HostAPI}

// Options configures a fake fal.
type Options struct {
	// Keys are "key_id:key_secret" strings accepted as API keys (model calls
	// and POST /tokens/).
	Keys []string
	// AdminKeys are ADMIN-scope keys accepted on the Platform keys API; they
	// are also valid as API keys.
	AdminKeys []string
	// TokenTTLMax caps the token_expiration a POST /tokens/ may ask for
	// (default 1h); longer requests are clamped to it.
	TokenTTLMax time.Duration
	// MaxCalls bounds the recorded call log for long runs (benchmarks): past
	// it the oldest half is forgotten. 0 = unbounded.
	MaxCalls int
}

// KeyInfo describes a live key. It never holds the secret.
type KeyInfo struct {
	KeyID        string    `json:"keyID"`
	Alias        string    `json:"alias"`
	Admin        bool      `json:"admin"`
	CreatedByAPI bool      `json:"createdByAPI"`
	CreatedAt    time.Time `json:"createdAt"`
}

// Call is one request fakefal received.
type Call struct {
	Host   string    `json:"host"` // canonical fal host name, e.g. "fal.run"
	Method string    `json:"method"`
	Path   string    `json:"path"`
	Query  string    `json:"query"`
	KeyID  string    `json:"keyID"` // key that authenticated it; for a JWT, the key that minted it; "" if none
	Status int       `json:"status"`
	Time   time.Time `json:"time"`
	// Header is the request's headers without Authorization (KeyID says who
	// authenticated), so tests can check what a proxy forwarded.
	Header http.Header `json:"header,omitempty"`
}

type keyEntry struct {
	KeyInfo
	secret string
}

type hostServer struct {
	name string
	ln   net.Listener
	srv  *http.Server
	url  string
}

// Server is a running fake fal. All methods are safe for concurrent use.
type Server struct {
	opts    Options
	caPEM   []byte
	caFile  string
	tmpDir  string
	jwtKey  []byte
	hosts   map[string]*hostServer
	closeMu sync.Once

	mu      sync.Mutex
	keys    map[string]*keyEntry // by key id
	revoked map[string]bool      // key ids that were revoked (JWTs they minted stop working)
	calls   []Call
	faults  []*faultRule
	queue   map[string]*queueRequest
	uploads map[string]*upload
	wsConns map[*wsConn]struct{}
}

// Start brings up one TLS listener per fal host on 127.0.0.1:0.
func Start(opts Options) (*Server, error) {
	if opts.TokenTTLMax <= 0 {
		opts.TokenTTLMax = time.Hour
	}
	s := &Server{
		opts:    opts,
		hosts:   map[string]*hostServer{},
		keys:    map[string]*keyEntry{},
		revoked: map[string]bool{},
		queue:   map[string]*queueRequest{},
		uploads: map[string]*upload{},
		wsConns: map[*wsConn]struct{}{},
		jwtKey:  randBytes(32),
	}
	for _, k := range opts.Keys {
		if err := s.addKey(k, false, "", false); err != nil {
			return nil, fmt.Errorf("fakefal: Options.Keys: %w", err)
		}
	}
	for _, k := range opts.AdminKeys {
		if err := s.addKey(k, true, "", false); err != nil {
			return nil, fmt.Errorf("fakefal: Options.AdminKeys: %w", err)
		}
	}

	ca, err := newCA()
	if err != nil {
		return nil, fmt.Errorf("fakefal: creating CA: %w", err)
	}
	names := append([]string{"localhost"}, Hosts...)
	leaf, err := ca.issue(names)
	if err != nil {
		return nil, fmt.Errorf("fakefal: issuing serving certificate: %w", err)
	}
	s.caPEM = ca.pem
	s.tmpDir, err = os.MkdirTemp("", "fakefal-")
	if err != nil {
		return nil, fmt.Errorf("fakefal: creating temp dir for the CA file: %w", err)
	}
	s.caFile = filepath.Join(s.tmpDir, "ca.pem")
	if err := os.WriteFile(s.caFile, s.caPEM, 0o600); err != nil {
		s.Close()
		return nil, fmt.Errorf("fakefal: writing CA file: %w", err)
	}

	for _, h := range Hosts {
		ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("fakefal: listening for %s: %w", h, err)
		}
		// HTTP/1.1 only: a dropped-connection fault must close a real TCP
		// connection, and WebSocket upgrades need HTTP/1.1 anyway.
		tlsLn := tls.NewListener(ln, &tls.Config{
			Certificates: []tls.Certificate{leaf},
			NextProtos:   []string{"http/1.1"},
			MinVersion:   tls.VersionTLS12,
		})
		hs := &hostServer{name: h, ln: tlsLn, url: "https://" + ln.Addr().String()}
		hs.srv = &http.Server{
			Handler:           s.hostHandler(h),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          quietLogger(),
		}
		s.hosts[h] = hs
	}
	for _, hs := range s.hosts {
		go func(hs *hostServer) { _ = hs.srv.Serve(hs.ln) }(hs)
	}
	return s, nil
}

// Close stops every listener, closes open WebSockets and removes the CA file.
func (s *Server) Close() {
	s.closeMu.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.mu.Lock()
		conns := make([]*wsConn, 0, len(s.wsConns))
		for c := range s.wsConns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			_ = c.conn.Close()
		}
		for _, hs := range s.hosts {
			if err := hs.srv.Shutdown(ctx); err != nil {
				_ = hs.srv.Close()
			}
		}
		if s.tmpDir != "" {
			_ = os.RemoveAll(s.tmpDir)
		}
	})
}

// URL returns the base URL serving host, e.g. URL("fal.run") =
// "https://127.0.0.1:41234". It panics on a host fakefal does not serve: that
// is a bug in the test.
func (s *Server) URL(host string) string {
	hs, ok := s.hosts[host]
	if !ok {
		panic(fmt.Sprintf("fakefal: unknown host %q (known: %s)", host, strings.Join(Hosts, ", ")))
	}
	return hs.url
}

// URLs maps each host to its base URL.
func (s *Server) URLs() map[string]string {
	m := make(map[string]string, len(s.hosts))
	for h, hs := range s.hosts {
		m[h] = hs.url
	}
	return m
}

// Overrides returns "https://<host>=<url>" for every host, the form the
// sidecar's --upstream-override and the manager's --fal-upstream-override take.
func (s *Server) Overrides() []string {
	out := make([]string, 0, len(Hosts))
	for _, h := range Hosts {
		out = append(out, "https://"+h+"="+s.hosts[h].url)
	}
	return out
}

// CAFile is the path of the CA certificate (PEM); removed on Close.
func (s *Server) CAFile() string { return s.caFile }

// CAPEM is the CA certificate in PEM form.
func (s *Server) CAPEM() []byte { return append([]byte(nil), s.caPEM...) }

// AddKey makes "key_id:key_secret" a valid API key. A malformed key is
// ignored: use AddKeyErr to see why.
func (s *Server) AddKey(key string) { _ = s.addKey(key, false, "", false) }

// AddKeyErr is AddKey reporting a malformed key.
func (s *Server) AddKeyErr(key string) error { return s.addKey(key, false, "", false) }

// AddAdminKey makes "key_id:key_secret" a valid ADMIN-scope key.
func (s *Server) AddAdminKey(key string) error { return s.addKey(key, true, "", false) }

// RevokeKey makes a key (and every JWT it minted) invalid at once, as
// deleting a key at fal does.
func (s *Server) RevokeKey(keyID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, keyID)
	s.revoked[keyID] = true
}

// Keys lists the live keys, oldest first.
func (s *Server) Keys() []KeyInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keyListLocked()
}

func (s *Server) keyListLocked() []KeyInfo {
	out := make([]KeyInfo, 0, len(s.keys))
	for _, k := range s.keys {
		out = append(out, k.KeyInfo)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].KeyID < out[j].KeyID
	})
	return out
}

// Calls returns a copy of every request received so far, in arrival order of
// their answers.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// CountCalls counts calls to host ("" = any) whose path starts with pathPrefix.
func (s *Server) CountCalls(host, pathPrefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		if (host == "" || c.Host == host) && strings.HasPrefix(c.Path, pathPrefix) {
			n++
		}
	}
	return n
}

// ResetCalls forgets the recorded calls.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

func (s *Server) addKey(key string, admin bool, alias string, byAPI bool) error {
	id, secret, ok := strings.Cut(key, ":")
	if !ok || id == "" || secret == "" {
		return errors.New(`key must look like "key_id:key_secret"`)
	}
	if alias == "" {
		alias = id
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[id] = &keyEntry{KeyInfo: KeyInfo{KeyID: id, Alias: alias, Admin: admin, CreatedByAPI: byAPI, CreatedAt: time.Now().UTC()}, secret: secret}
	delete(s.revoked, id)
	return nil
}

// checkKey validates an "Authorization: Key id:secret" value.
func (s *Server) checkKey(key string) (keyID string, admin bool, ok bool) {
	id, secret, found := strings.Cut(key, ":")
	if !found {
		return "", false, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, live := s.keys[id]
	if !live || k.secret != secret {
		return "", false, false
	}
	return id, k.Admin, true
}

func (s *Server) keyLive(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.keys[id]
	return ok
}

func (s *Server) record(c Call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.opts.MaxCalls; m > 0 && len(s.calls) >= m {
		keep := m / 2
		s.calls = append(s.calls[:0], s.calls[len(s.calls)-keep:]...)
	}
	s.calls = append(s.calls, c)
}

// externalBase is the base URL of host as the caller addressed it: the Host
// header, so URLs fakefal hands out (queue status_url and friends) work
// through a proxy that forwards the canonical host, and point straight at the
// listener otherwise.
func externalBase(r *http.Request) string {
	return "https://" + r.Host
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("fakefal: crypto/rand: " + err.Error())
	}
	return b
}

func randHex(n int) string { return hex.EncodeToString(randBytes(n)) }

// newRequestID returns a UUID-shaped id like fal's request ids.
func newRequestID() string {
	b := randBytes(16)
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
