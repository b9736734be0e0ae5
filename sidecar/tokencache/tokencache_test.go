package tokencache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type fakeMint struct {
	calls atomic.Int32
	mu    sync.Mutex
	err   error
	block chan struct{}
}

func (f *fakeMint) mint(ctx context.Context, alias string, ttl time.Duration) (string, error) {
	n := f.calls.Add(1)
	if f.block != nil {
		<-f.block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	return fmt.Sprintf("tok-%s-%d", alias, n), nil
}

func (f *fakeMint) fail(err error) { f.mu.Lock(); f.err = err; f.mu.Unlock() }

func newCache(t *testing.T, m *fakeMint) (*Cache, *clock) {
	t.Helper()
	old := BaseBackoff
	BaseBackoff = time.Millisecond
	t.Cleanup(func() { BaseBackoff = old })
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	c := New(m.mint, Counters{})
	c.now = clk.now
	return c, clk
}

func TestConcurrentMissesShareOneCall(t *testing.T) {
	m := &fakeMint{block: make(chan struct{})}
	c, _ := newCache(t, m)
	const callers = 1000
	var wg sync.WaitGroup
	results := make(chan string, callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := c.Get(context.Background(), "flux", 120*time.Second)
			if err != nil {
				t.Error(err)
			}
			results <- tok.Value
		}()
	}
	time.Sleep(20 * time.Millisecond) // let callers pile up behind the flight
	close(m.block)
	wg.Wait()
	close(results)
	for v := range results {
		if v != "tok-flux-1" {
			t.Fatalf("caller got %q", v)
		}
	}
	if n := m.calls.Load(); n != 1 {
		t.Fatalf("%d upstream calls, want 1", n)
	}
}

func TestHitRefreshFlushAndStale(t *testing.T) {
	m := &fakeMint{}
	c, clk := newCache(t, m)
	ctx := context.Background()
	get := func() string {
		t.Helper()
		tok, err := c.Get(ctx, "flux", 120*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return tok.Value
	}
	waitCalls := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for m.calls.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("calls %d, want %d", m.calls.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(5 * time.Millisecond) // let the flight store its result
	}
	if v := get(); v != "tok-flux-1" {
		t.Fatal(v)
	}
	clk.add(30 * time.Second)
	if v := get(); v != "tok-flux-1" || m.calls.Load() != 1 {
		t.Fatalf("fresh token not served from cache: %s", v)
	}
	// Past half-life: the cached token is still served, a refresh starts.
	clk.add(40 * time.Second)
	if v := get(); v != "tok-flux-1" {
		t.Fatalf("refresh-ahead made the caller wait: %s", v)
	}
	waitCalls(2)
	if v := get(); v != "tok-flux-2" {
		t.Fatalf("refreshed token not used: %s", v)
	}
	// Key change: flushed, the next Get mints again.
	c.Flush()
	if v := get(); v != "tok-flux-3" {
		t.Fatalf("flush ignored: %s", v)
	}
	// fal fails: the last good token is served while it has life left...
	m.fail(&UpstreamError{Status: 503})
	clk.add(110 * time.Second) // 10s left: below the serve margin, above StaleGrace
	if v := get(); v != "tok-flux-3" {
		t.Fatalf("last good token not served while fal fails: %s", v)
	}
	// ...and not once it is about to expire.
	clk.add(9 * time.Second)
	if _, err := c.Get(ctx, "flux", 120*time.Second); err == nil {
		t.Fatal("an expiring token was served")
	}
	// fal recovers: the cache recovers by itself.
	m.fail(nil)
	clk.add(time.Minute) // past the failure backoff
	if v := get(); !strings.HasPrefix(v, "tok-flux-") || v == "tok-flux-3" {
		t.Fatalf("no recovery: %s", v)
	}
}

func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		calls int32
	}{
		{"key refused is final", &UpstreamError{Status: 401}, 1},
		{"forbidden is final", &UpstreamError{Status: 403}, 1},
		{"5xx retried", &UpstreamError{Status: 502}, int32(Attempts)},
		{"429 retried", &UpstreamError{Status: 429}, int32(Attempts)},
		{"network retried", errors.New("connection refused"), int32(Attempts)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &fakeMint{err: tc.err}
			c, _ := newCache(t, m)
			if _, err := c.Get(context.Background(), "a", time.Minute); err == nil {
				t.Fatal("no error")
			}
			if m.calls.Load() != tc.calls {
				t.Fatalf("%d calls, want %d", m.calls.Load(), tc.calls)
			}
			// A second caller right after the failure is answered from the
			// failure backoff, not by another call to fal.
			if _, err := c.Get(context.Background(), "a", time.Minute); err == nil || m.calls.Load() != tc.calls {
				t.Fatalf("hammered fal after failure: %v, %d calls", err, m.calls.Load())
			}
		})
	}
}

func TestCallerCancelDoesNotFailOthers(t *testing.T) {
	m := &fakeMint{block: make(chan struct{})}
	c, _ := newCache(t, m)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Get(ctx, "a", time.Minute); errc <- err }()
	other := make(chan Token, 1)
	go func() { tok, _ := c.Get(context.Background(), "a", time.Minute); other <- tok }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller got %v", err)
	}
	close(m.block)
	if tok := <-other; tok.Value != "tok-a-1" {
		t.Fatalf("other caller got %q", tok.Value)
	}
}

func TestExpiry(t *testing.T) {
	issued := time.Unix(1_800_000_000, 0)
	signed, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"exp": issued.Add(90 * time.Second).Unix()}).SignedString([]byte("k"))
	if got := expiry(signed, issued, time.Hour); !got.Equal(issued.Add(90 * time.Second)) {
		t.Errorf("exp claim ignored: %v", got)
	}
	if got := expiry("opaque-token", issued, time.Minute); !got.Equal(issued.Add(time.Minute)) {
		t.Errorf("fallback to ttl: %v", got)
	}
}

func TestMinter(t *testing.T) {
	var gotAuth, gotBody string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		b := make([]byte, 200)
		n, _ := r.Body.Read(b)
		gotBody = string(b[:n])
		switch r.URL.Query().Get("mode") {
		case "obj":
			fmt.Fprint(w, `{"token":"abc.def.ghi"}`)
		case "429":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"detail":"slow down, Key kid:secret"}`)
		case "junk":
			fmt.Fprint(w, `{"nope":1}`)
		default:
			fmt.Fprint(w, `"abc.def.ghi"`)
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		mode, want, wantErr string
	}{
		{"", "abc.def.ghi", ""},
		{"obj", "abc.def.ghi", ""},
		{"429", "", "HTTP 429"},
		{"junk", "", "not a JSON string"},
	} {
		m := &Minter{Transport: http.DefaultTransport, URL: srv.URL + "/tokens/?mode=" + tc.mode, Key: func() string { return "kid:secret" }}
		got, err := m.Mint(context.Background(), "flux", 120*time.Second)
		if got != tc.want || (tc.wantErr == "") != (err == nil) || err != nil && (!strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "secret")) {
			t.Errorf("mode %q: got %q, %v", tc.mode, got, err)
		}
		var ue *UpstreamError
		if tc.mode == "429" && (!errors.As(err, &ue) || RetryAfterSeconds(ue.RetryAfter) != 7) {
			t.Errorf("429 lost Retry-After: %v", err)
		}
	}
	if gotAuth != "Key kid:secret" || gotBody != `{"allowed_apps":["flux"],"token_expiration":120}` {
		t.Errorf("request: auth %q body %q", gotAuth, gotBody)
	}
}
