// Package falapi is the operator's HTTP client for fal: minting a realtime
// token to verify a key (POST rest.fal.ai/tokens/) and managing keys through
// the Platform API (api.fal.ai/v1/keys). Canonical hosts can be pointed
// elsewhere (tests, egress proxies) and an extra CA trusted.
//
// No key, key secret or token ever appears in an error this package returns.
package falapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Canonical base URLs of the fal hosts this client talks to.
const (
	RestBaseURL = "https://rest.fal.ai"
	APIBaseURL  = "https://api.fal.ai"
)

// Endpoint names, used as the "endpoint" metric label.
const (
	EndpointTokens     = "tokens"
	EndpointKeysCreate = "keys_create"
	EndpointKeysList   = "keys_list"
	EndpointKeysDelete = "keys_delete"
)

// Options configure a Client.
type Options struct {
	// Overrides maps a canonical base URL (https://api.fal.ai) to a replacement
	// (https://127.0.0.1:9443). Trailing slashes are ignored.
	Overrides map[string]string
	// CAFile is a PEM bundle trusted in addition to the system roots.
	CAFile string
	// Timeout bounds every single HTTP call; default 15s.
	Timeout time.Duration
	// OnCall, when set, is told about every call: endpoint and the HTTP status
	// as text, or "error" when no answer arrived.
	OnCall func(endpoint, status string)
}

// Client talks to fal. Safe for concurrent use.
type Client struct {
	http      *http.Client
	overrides map[string]string
	onCall    func(endpoint, status string)
}

// New builds a Client, validating overrides and loading the CA file.
func New(o Options) (*Client, error) {
	ov := map[string]string{}
	for from, to := range o.Overrides {
		from, to = strings.TrimRight(from, "/"), strings.TrimRight(to, "/")
		for _, u := range []string{from, to} {
			p, err := url.Parse(u)
			if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" || (p.Path != "" && p.Path != "/") {
				return nil, fmt.Errorf("fal upstream override %q=%q: each side must be a scheme://host[:port] base URL", from, to)
			}
		}
		ov[from] = to
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 16
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading --fal-ca-file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--fal-ca-file %s holds no PEM certificate", o.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	onCall := o.OnCall
	if onCall == nil {
		onCall = func(string, string) {}
	}
	return &Client{
		// fal's APIs never redirect; following one could send the key elsewhere.
		http: &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
		overrides: ov,
		onCall:    onCall,
	}, nil
}

// ParseOverrides turns repeated "canonical=replacement" strings into a map.
func ParseOverrides(list []string) (map[string]string, error) {
	m := map[string]string{}
	for _, v := range list {
		from, to, ok := strings.Cut(v, "=")
		if !ok || from == "" || to == "" {
			return nil, fmt.Errorf("fal upstream override %q: want https://canonical.host=https://replacement", v)
		}
		m[strings.TrimRight(from, "/")] = strings.TrimRight(to, "/")
	}
	return m, nil
}

// StatusError is an HTTP answer from fal other than success.
type StatusError struct {
	Endpoint   string
	Status     int
	Detail     string        // fal's "detail" message, trimmed; never holds the key
	RetryAfter time.Duration // from Retry-After, zero when absent
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("fal %s answered %d %s", e.Endpoint, e.Status, http.StatusText(e.Status))
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// UnreachableError is a call that got no HTTP answer (DNS, connect, TLS, timeout).
type UnreachableError struct {
	Endpoint string
	Err      error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("fal %s unreachable: %v", e.Endpoint, e.Err)
}
func (e *UnreachableError) Unwrap() error { return e.Err }

// IsRejection reports whether fal refused the credential itself (401/403):
// retrying with the same key will not help.
func IsRejection(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && (se.Status == http.StatusUnauthorized || se.Status == http.StatusForbidden)
}

// IsTransient reports whether the error is worth retrying later with backoff:
// no answer, 429, or a 5xx.
func IsTransient(err error) bool {
	var ue *UnreachableError
	if errors.As(err, &ue) {
		return true
	}
	var se *StatusError
	return errors.As(err, &se) && (se.Status == http.StatusTooManyRequests || se.Status >= 500)
}

// RetryAfter returns fal's Retry-After hint carried by err, or zero.
func RetryAfter(err error) time.Duration {
	var se *StatusError
	if errors.As(err, &se) {
		return se.RetryAfter
	}
	return 0
}

// MintToken asks fal for a realtime token with key, which proves that fal
// accepts the key. The token itself is discarded.
func (c *Client) MintToken(ctx context.Context, key string, apps []string, ttl time.Duration) error {
	body := map[string]any{"allowed_apps": apps, "token_expiration": int(ttl / time.Second)}
	var tok json.RawMessage
	if err := c.do(ctx, EndpointTokens, http.MethodPost, RestBaseURL+"/tokens/", key, body, &tok); err != nil {
		return err
	}
	// fal answers a bare JSON string; anything else means we did not reach fal.
	var s string
	if json.Unmarshal(tok, &s) != nil || s == "" {
		return &StatusError{Endpoint: EndpointTokens, Status: http.StatusBadGateway, Detail: "answer is not a token string"}
	}
	return nil
}

// CreatedKey is fal's answer to a key creation. Secret must go straight into
// the managed Secret; it is never shown again by fal.
type CreatedKey struct {
	KeyID  string `json:"key_id"`
	Secret string `json:"key_secret"`
	Key    string `json:"key"`
}

// String hides the secret so a CreatedKey can never be logged by accident.
func (k CreatedKey) String() string { return "CreatedKey{KeyID:" + k.KeyID + "}" }

// CreateKey creates an API key with the given alias, using an admin key.
func (c *Client) CreateKey(ctx context.Context, adminKey, alias string) (CreatedKey, error) {
	var out CreatedKey
	if err := c.do(ctx, EndpointKeysCreate, http.MethodPost, APIBaseURL+"/v1/keys", adminKey, map[string]string{"alias": alias}, &out); err != nil {
		return CreatedKey{}, err
	}
	if out.KeyID == "" || out.Secret == "" {
		return CreatedKey{}, &StatusError{Endpoint: EndpointKeysCreate, Status: http.StatusBadGateway, Detail: "answer lacks key_id or key_secret"}
	}
	if out.Key == "" {
		out.Key = out.KeyID + ":" + out.Secret
	}
	return out, nil
}

// KeyInfo is one key as fal lists it (never with its secret).
type KeyInfo struct {
	KeyID     string `json:"key_id"`
	Alias     string `json:"alias"`
	Scope     string `json:"scope"`
	CreatedAt string `json:"created_at"`
}

// maxListPages bounds paging so a misbehaving server cannot loop us forever.
const maxListPages = 200

// ListKeys returns every key of the account, following cursor pages.
func (c *Client) ListKeys(ctx context.Context, adminKey string) ([]KeyInfo, error) {
	var all []KeyInfo
	cursor := ""
	for page := 0; page < maxListPages; page++ {
		q := url.Values{"limit": {"100"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		var out struct {
			Keys       []KeyInfo `json:"keys"`
			NextCursor *string   `json:"next_cursor"`
			HasMore    bool      `json:"has_more"`
		}
		if err := c.do(ctx, EndpointKeysList, http.MethodGet, APIBaseURL+"/v1/keys?"+q.Encode(), adminKey, nil, &out); err != nil {
			return nil, err
		}
		all = append(all, out.Keys...)
		if !out.HasMore || out.NextCursor == nil || *out.NextCursor == "" || *out.NextCursor == cursor {
			return all, nil
		}
		cursor = *out.NextCursor
	}
	return nil, fmt.Errorf("fal %s: more than %d pages of keys, giving up", EndpointKeysList, maxListPages)
}

// DeleteKey deletes a key at fal. fal answers 204 also for an unknown key, so
// a repeated delete (after a crash) is harmless; 404 is treated the same way.
func (c *Client) DeleteKey(ctx context.Context, adminKey, keyID string) error {
	if keyID == "" || strings.ContainsAny(keyID, "/?#") {
		return fmt.Errorf("refusing to delete fal key with malformed id %q", keyID)
	}
	err := c.do(ctx, EndpointKeysDelete, http.MethodDelete, APIBaseURL+"/v1/keys/"+url.PathEscape(keyID), adminKey, nil, nil)
	var se *StatusError
	if errors.As(err, &se) && se.Status == http.StatusNotFound {
		return nil
	}
	return err
}

// resolve applies the override for the canonical base of raw.
func (c *Client) resolve(raw string) string {
	for from, to := range c.overrides {
		if raw == from || strings.HasPrefix(raw, from+"/") || strings.HasPrefix(raw, from+"?") {
			return to + raw[len(from):]
		}
	}
	return raw
}

func (c *Client) do(ctx context.Context, endpoint, method, rawURL, key string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding fal %s request: %w", endpoint, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.resolve(rawURL), body)
	if err != nil {
		return fmt.Errorf("building fal %s request: %w", endpoint, err)
	}
	req.Header.Set("Authorization", "Key "+key)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "falguard-operator")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.onCall(endpoint, "error")
		return &UnreachableError{Endpoint: endpoint, Err: scrub(err)}
	}
	defer resp.Body.Close()
	c.onCall(endpoint, strconv.Itoa(resp.StatusCode))
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &UnreachableError{Endpoint: endpoint, Err: fmt.Errorf("reading answer: %w", scrub(err))}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &StatusError{Endpoint: endpoint, Status: resp.StatusCode, Detail: detail(data, key), RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(data, out); err != nil {
			return &StatusError{Endpoint: endpoint, Status: http.StatusBadGateway, Detail: "answer is not the JSON fal sends"}
		}
	}
	return nil
}

// scrub drops the request URL from transport errors: it is harmless today,
// but keeps errors stable and short.
func scrub(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		var ne net.Error
		if errors.As(ue.Err, &ne) && ne.Timeout() {
			return errors.New("timeout")
		}
		return ue.Err
	}
	return err
}

// detail extracts fal's error message, bounded, with the key redacted in case
// a server ever echoes it.
func detail(body []byte, key string) string {
	var v struct {
		Detail  any    `json:"detail"`
		Message string `json:"message"`
	}
	msg := ""
	if json.Unmarshal(body, &v) == nil {
		switch d := v.Detail.(type) {
		case string:
			msg = d
		case nil:
			msg = v.Message
		default:
			b, _ := json.Marshal(d)
			msg = string(b)
		}
	}
	if key != "" {
		msg = strings.ReplaceAll(msg, key, "[redacted]")
		if _, secret, ok := strings.Cut(key, ":"); ok && secret != "" {
			msg = strings.ReplaceAll(msg, secret, "[redacted]")
		}
	}
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return msg
}

func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

// ParseKey splits a fal key "key_id:key_secret" (surrounding whitespace
// ignored). Errors describe the shape only, never the value.
func ParseKey(raw string) (keyID, secret string, err error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", "", errors.New("the key is empty: store it as key_id:key_secret")
	}
	id, sec, ok := strings.Cut(s, ":")
	switch {
	case !ok:
		return "", "", errors.New("the key has no ':' separator: store it as key_id:key_secret")
	case id == "" || sec == "":
		return "", "", errors.New("the key has an empty key_id or key_secret: store it as key_id:key_secret")
	case strings.ContainsAny(s, " \t\r\n") || strings.Contains(sec, ":"):
		return "", "", errors.New("the key holds whitespace or a second ':': store exactly key_id:key_secret")
	}
	return id, sec, nil
}
