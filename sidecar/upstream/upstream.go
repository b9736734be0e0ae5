// Package upstream knows where fal's canonical hosts really are (so tests and
// the demo can point them at fakefal) and builds the HTTP transport and
// WebSocket dialer used to reach them.
package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/falguard/falguard/sidecar/target"
)

// Resolver maps canonical fal hosts to where requests really go.
type Resolver struct {
	base map[string]*url.URL // canonical host -> scheme://host[:port][/prefix]
}

// NewResolver parses --upstream-override values "https://fal.run=https://127.0.0.1:9443".
func NewResolver(overrides []string) (*Resolver, error) {
	r := &Resolver{base: map[string]*url.URL{}}
	for _, h := range target.Hosts {
		r.base[h] = &url.URL{Scheme: "https", Host: h}
	}
	for _, o := range overrides {
		from, to, ok := strings.Cut(o, "=")
		if !ok {
			return nil, fmt.Errorf("--upstream-override %q: want https://canonical-host=scheme://replacement", o)
		}
		host, ok := strings.CutPrefix(strings.TrimRight(from, "/"), "https://")
		if _, known := r.base[host]; !ok || !known {
			return nil, fmt.Errorf("--upstream-override %q: left side must be https:// plus one of %s", o, strings.Join(target.Hosts, ", "))
		}
		u, err := url.Parse(strings.TrimRight(to, "/"))
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("--upstream-override %q: right side must be an http(s)://host[:port][/path] URL", o)
		}
		r.base[host] = u
	}
	return r, nil
}

// URL is where a request for canonical host+path+query goes.
func (r *Resolver) URL(host, path, rawQuery string) string {
	b := r.base[host]
	u := b.Scheme + "://" + b.Host + b.Path + path
	if rawQuery != "" {
		u += "?" + rawQuery
	}
	return u
}

// WSURL is URL with the ws/wss scheme.
func (r *Resolver) WSURL(host, path, rawQuery string) string {
	u := r.URL(host, path, rawQuery)
	if rest, ok := strings.CutPrefix(u, "https://"); ok {
		return "wss://" + rest
	}
	return "ws://" + strings.TrimPrefix(u, "http://")
}

// TLSConfig trusts the system roots plus caFile (PEM) if given.
func TLSConfig(caFile string) (*tls.Config, error) {
	// Session resumption: many relays to one host skip the full handshake
	// (and re-parsing fal's certificate chain) after the first.
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(64)}
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading --upstream-ca-file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--upstream-ca-file %s holds no PEM certificate", caFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

var dialer = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}

// NewTransport is tuned for many concurrent and idle connections to a few
// hosts. It never decompresses, so bodies pass through byte for byte.
func NewTransport(tlsCfg *tls.Config) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsCfg.Clone(), // Clone shares the session cache
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		WriteBufferSize:       16 << 10,
		ReadBufferSize:        16 << 10,
	}
}

// NewDialer builds the WebSocket dialer for the realtime relay. Small
// buffers and a shared write pool keep idle relays cheap.
func NewDialer(tlsCfg *tls.Config, pool websocket.BufferPool) *websocket.Dialer {
	return &websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		NetDialContext:   dialer.DialContext,
		TLSClientConfig:  tlsCfg.Clone(),
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   4 << 10,
		// 64 KiB: a large frame goes out in few writes and TLS records; the
		// pool lends it only while a message is written, so idle relays hold none.
		WriteBufferSize: 64 << 10,
		WriteBufferPool: pool,
	}
}
