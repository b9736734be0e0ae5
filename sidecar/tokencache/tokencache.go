// Package tokencache mints and caches fal's short-lived realtime JWTs, one
// entry per app alias. Concurrent misses share one upstream call, tokens are
// refreshed ahead of expiry, and when fal fails the last good token is served
// while it is still valid.
package tokencache

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token is a minted JWT and when it stops working.
type Token struct {
	Value   string
	Issued  time.Time
	Expires time.Time
}

func (t Token) life() time.Duration { return t.Expires.Sub(t.Issued) }

// MintFunc asks fal for a token for alias with the given lifetime.
type MintFunc func(ctx context.Context, alias string, ttl time.Duration) (string, error)

// Counters are the cache's metric hooks; nil fields are skipped.
type Counters struct {
	Hit, Miss, Refresh, Error func()
}

// Tunables (variables so tests can shrink them).
var (
	// FlightTimeout bounds one shared upstream mint, retries included.
	FlightTimeout = 10 * time.Second
	// Attempts per flight and the base of the jittered backoff between them.
	Attempts    = 3
	BaseBackoff = 200 * time.Millisecond
	// MaxServeMargin is the most life a token must have left to be handed
	// out; shorter-lived tokens need a quarter of their lifetime left.
	MaxServeMargin = 15 * time.Second
	// StaleGrace is how much life the last good token needs to be served when
	// fal is failing.
	StaleGrace = 2 * time.Second
)

// Cache is safe for concurrent use.
type Cache struct {
	mint MintFunc
	c    Counters
	now  func() time.Time

	mu      sync.Mutex
	gen     uint64
	entries map[string]*entry
}

type entry struct {
	tok      Token // last good; zero if none
	flight   *flight
	failures int
	retryAt  time.Time // no new upstream attempt before this after failures
	lastErr  error
}

type flight struct {
	done chan struct{}
	tok  Token
	err  error
}

// New returns an empty cache.
func New(mint MintFunc, c Counters) *Cache {
	return &Cache{mint: mint, c: c, now: time.Now, entries: map[string]*entry{}}
}

func call(f func()) {
	if f != nil {
		f()
	}
}

// Flush drops every entry; used when the key changes, since fal refuses
// tokens minted by a revoked key.
func (c *Cache) Flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.entries = map[string]*entry{}
}

// Invalidate drops alias's token if it is still value (fal refused it).
func (c *Cache) Invalidate(alias, value string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[alias]; e != nil && e.tok.Value == value {
		e.tok = Token{}
	}
}

func serveMargin(life time.Duration) time.Duration {
	return min(MaxServeMargin, life/4)
}

// Get returns a token for alias with enough life left, minting one with ttl
// if needed.
func (c *Cache) Get(ctx context.Context, alias string, ttl time.Duration) (Token, error) {
	c.mu.Lock()
	e := c.entries[alias]
	if e == nil {
		e = &entry{}
		c.entries[alias] = e
	}
	now := c.now()
	if e.tok.Value != "" {
		left := e.tok.Expires.Sub(now)
		if left > serveMargin(e.tok.life()) {
			// Refresh ahead once past half-life, so callers rarely wait.
			if left < e.tok.life()/2 && e.flight == nil && !now.Before(e.retryAt) {
				c.startFlight(alias, e, ttl)
			}
			tok := e.tok
			c.mu.Unlock()
			call(c.c.Hit)
			return tok, nil
		}
	}
	if e.flight == nil {
		if now.Before(e.retryAt) { // fal failed moments ago: don't hammer it
			tok, ok := c.stale(e, now)
			err := e.lastErr
			c.mu.Unlock()
			if ok {
				call(c.c.Hit)
				return tok, nil
			}
			return Token{}, err
		}
		c.startFlight(alias, e, ttl)
	}
	f := e.flight
	c.mu.Unlock()
	call(c.c.Miss)

	select {
	case <-f.done:
	case <-ctx.Done():
		return Token{}, ctx.Err()
	}
	if f.err == nil {
		return f.tok, nil
	}
	c.mu.Lock()
	tok, ok := c.stale(e, c.now())
	c.mu.Unlock()
	if ok {
		return tok, nil
	}
	return Token{}, f.err
}

func (c *Cache) stale(e *entry, now time.Time) (Token, bool) {
	return e.tok, e.tok.Value != "" && e.tok.Expires.Sub(now) > StaleGrace
}

// startFlight mints in the background, detached from any one caller, so a
// caller that gives up does not fail the others. Call with c.mu held.
func (c *Cache) startFlight(alias string, e *entry, ttl time.Duration) {
	f := &flight{done: make(chan struct{})}
	e.flight = f
	gen := c.gen
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), FlightTimeout)
		defer cancel()
		tok, err := c.mintWithRetry(ctx, alias, ttl)
		c.mu.Lock()
		e.flight = nil
		if gen == c.gen { // a flush in between orphans e; its result is not cached
			if err == nil {
				e.tok, e.failures, e.retryAt, e.lastErr = tok, 0, time.Time{}, nil
			} else {
				e.failures++
				e.lastErr = err
				e.retryAt = c.now().Add(jitter(BaseBackoff << min(e.failures, 6)))
			}
		}
		f.tok, f.err = tok, err
		close(f.done)
		c.mu.Unlock()
	}()
}

func (c *Cache) mintWithRetry(ctx context.Context, alias string, ttl time.Duration) (Token, error) {
	var err error
	for attempt := 0; attempt < Attempts; attempt++ {
		if attempt > 0 {
			t := time.NewTimer(jitter(BaseBackoff << (attempt - 1)))
			select {
			case <-ctx.Done():
				t.Stop()
				return Token{}, err
			case <-t.C:
			}
		}
		issued := c.now()
		var v string
		v, err = c.mint(ctx, alias, ttl)
		if err == nil {
			call(c.c.Refresh)
			return Token{Value: v, Issued: issued, Expires: expiry(v, issued, ttl)}, nil
		}
		call(c.c.Error)
		var ue *UpstreamError
		if errors.As(err, &ue) && !ue.Retryable() {
			return Token{}, err
		}
		if ctx.Err() != nil {
			return Token{}, err
		}
	}
	return Token{}, err
}

// jitter spreads d over [d/2, 3d/2).
func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d)+1))
}

// expiry reads the JWT's exp without verifying it (the sidecar cannot, and
// need not: fal verifies); without one it trusts the lifetime it asked for.
func expiry(token string, issued time.Time, ttl time.Duration) time.Time {
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(token, claims); err == nil {
		if exp, err := claims.GetExpirationTime(); err == nil && exp != nil && exp.After(issued) {
			return exp.Time
		}
	}
	return issued.Add(ttl)
}
