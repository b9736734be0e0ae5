package tokencache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// UpstreamError is fal answering POST /tokens/ with a non-2xx status. It
// carries no body: fal may echo request headers, and those hold the key.
type UpstreamError struct {
	Status     int
	RetryAfter string
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("fal answered POST /tokens/ with HTTP %d", e.Status)
}

// Retryable reports whether trying again may help.
func (e *UpstreamError) Retryable() bool {
	return e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout || e.Status >= 500
}

// Minter calls fal's token endpoint.
type Minter struct {
	Transport http.RoundTripper
	URL       string        // resolved https://rest.fal.ai/tokens/
	Key       func() string // current "key_id:key_secret"
	UserAgent string
	Observe   func(time.Duration) // upstream latency hook, may be nil
}

// Mint implements MintFunc.
func (m *Minter) Mint(ctx context.Context, alias string, ttl time.Duration) (string, error) {
	body, _ := json.Marshal(map[string]any{"allowed_apps": []string{alias}, "token_expiration": int(ttl / time.Second)})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.URL, bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("building the token request: %w", err)
	}
	req.Header.Set("Authorization", "Key "+m.Key())
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", m.UserAgent)
	start := time.Now()
	resp, err := m.Transport.RoundTrip(req)
	if m.Observe != nil {
		m.Observe(time.Since(start))
	}
	if err != nil {
		return "", fmt.Errorf("calling fal's token endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return "", &UpstreamError{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("reading fal's token response: %w", err)
	}
	// fal answers a bare JSON string; accept {"token": ...} too.
	var s string
	if json.Unmarshal(raw, &s) != nil {
		var obj struct {
			Token string `json:"token"`
		}
		if json.Unmarshal(raw, &obj) == nil {
			s = obj.Token
		}
	}
	if s == "" || strings.ContainsAny(s, " \t\r\n\"") {
		return "", errors.New("fal's token response is not a JSON string holding a token")
	}
	return s, nil
}

// RetryAfterSeconds parses a Retry-After header in seconds (0 if absent).
func RetryAfterSeconds(v string) int {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0
	}
	return n
}
