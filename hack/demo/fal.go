package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/falguard/falguard/hack/fakefal"
)

// FalStatusForKey asks fakefal for a realtime token with key, as any fal
// client would, and returns the HTTP status: 200 for a live key, 401 for a
// revoked one.
func (e *Env) FalStatusForKey(ctx context.Context, key string) (int, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.Fal.CAPEM())
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.Fal.URL(fakefal.HostRest)+"/tokens/",
		strings.NewReader(`{"allowed_apps":["fast-lcm-diffusion"],"token_expiration":60}`))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Key "+key)
	req.Header.Set("Content-Type", "application/json")
	res, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("calling fakefal's POST /tokens/: %w", err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode, nil
}

// FalKeyLive reports whether fakefal lists keyID as a live key.
func (e *Env) FalKeyLive(keyID string) bool {
	for _, k := range e.Fal.Keys() {
		if k.KeyID == keyID {
			return true
		}
	}
	return false
}

// FalCallsSince returns fakefal's calls to host (any if "") with the path
// prefix, answered after t.
func (e *Env) FalCallsSince(t time.Time, host, pathPrefix string) []fakefal.Call {
	var out []fakefal.Call
	for _, c := range e.Fal.Calls() {
		if c.Time.After(t) && (host == "" || c.Host == host) && strings.HasPrefix(c.Path, pathPrefix) {
			out = append(out, c)
		}
	}
	return out
}

// KeysCreatedByOperator lists the live keys created through the Platform API.
func (e *Env) KeysCreatedByOperator() []fakefal.KeyInfo {
	var out []fakefal.KeyInfo
	for _, k := range e.Fal.Keys() {
		if k.CreatedByAPI {
			out = append(out, k)
		}
	}
	return out
}
