// Package credentials loads the fal key and the policy, either from a
// credentials directory in kubelet's atomic-writer layout (a `..data` symlink
// swapped to a new timestamped directory on every update) or standalone from
// an env var plus flags. It polls for changes and swaps key and policy
// together, atomically; a bad update keeps the last good pair.
package credentials

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/falguard/falguard/sidecar/policy"
)

// DataLink is the symlink kubelet swaps atomically on Secret updates.
const DataLink = "..data"

// Snapshot is one consistent key + policy pair. Treat it as immutable.
type Snapshot struct {
	key     string
	KeyID   string
	Policy  *policy.Policy
	Limiter *rate.Limiter // nil when the policy sets no rate limit
	Loaded  time.Time
}

// Key is "key_id:key_secret". Never log it or put it in an error.
func (s *Snapshot) Key() string { return s.key }

// Secret is the secret half of the key (what must never leak).
func (s *Snapshot) Secret() string {
	_, sec, _ := strings.Cut(s.key, ":")
	return sec
}

// NewSnapshot builds a snapshot from a key and a validated policy (tests and
// standalone callers).
func NewSnapshot(key string, pol *policy.Policy) (*Snapshot, error) {
	id, err := checkKey(key)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{key: key, KeyID: id, Policy: pol, Loaded: time.Now()}
	if rl := pol.RateLimit; rl.RequestsPerSecond > 0 {
		s.Limiter = rate.NewLimiter(rate.Limit(rl.RequestsPerSecond), max(rl.Burst, 1))
	}
	return s, nil
}

// Options says where key and policy come from.
type Options struct {
	Dir         string   // --credentials-dir
	KeyEnv      string   // --key-env
	AllowedApps []string // --allowed-app
	PolicyFile  string   // --policy-file
	Interval    time.Duration
	Logger      *slog.Logger
	Getenv      func(string) string // os.Getenv if nil
	// OnReload and OnReloadError are called after every successful or failed
	// (re)load, for metrics.
	OnReload, OnReloadError func()
}

// Store holds the current snapshot and reloads it.
type Store struct {
	opts      Options
	cur       atomic.Pointer[Snapshot]
	mu        sync.Mutex // serialises reloads and listeners
	listeners []func(old, new *Snapshot)
	lastSeen  string
	loadedCh  chan struct{}
	loadOnce  sync.Once
}

// New validates the option combination.
func New(opts Options) (*Store, error) {
	switch {
	case opts.Dir == "" && opts.KeyEnv == "":
		return nil, errors.New("no key source: set --credentials-dir DIR (in Kubernetes) or --key-env FAL_KEY (standalone)")
	case opts.Dir != "" && opts.KeyEnv != "":
		return nil, errors.New("--credentials-dir and --key-env are mutually exclusive: pick one key source")
	case opts.PolicyFile != "" && len(opts.AllowedApps) > 0:
		return nil, errors.New("--policy-file and --allowed-app are mutually exclusive: put the apps in the file")
	case opts.KeyEnv != "" && opts.PolicyFile == "" && len(opts.AllowedApps) == 0:
		return nil, errors.New("--key-env needs a policy: add --allowed-app owner/alias (repeatable) or --policy-file FILE")
	}
	if opts.Interval <= 0 {
		// A readlink twice a second costs nothing and keeps reload well under 1s.
		opts.Interval = 500 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	return &Store{opts: opts, loadedCh: make(chan struct{})}, nil
}

// Current is the live snapshot, nil until the first successful load.
func (s *Store) Current() *Snapshot { return s.cur.Load() }

// Loaded is closed once a snapshot is available.
func (s *Store) Loaded() <-chan struct{} { return s.loadedCh }

// OnChange registers fn, called after each swap (old is nil the first time).
func (s *Store) OnChange(fn func(old, new *Snapshot)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, fn)
}

// Run loads now and then polls every Interval until ctx ends.
func (s *Store) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		_ = s.Reload()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Reload loads key and policy if their files changed since the last attempt.
// It returns the load error, if any (already logged and counted).
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fp := s.fingerprint()
	if fp == s.lastSeen && s.cur.Load() != nil {
		return nil
	}
	key, pol, err := s.read()
	if err != nil {
		if fp != s.lastSeen { // log and count each bad version once, not every poll
			s.lastSeen = fp
			s.opts.Logger.Error("credentials not loaded, keeping the last good ones", "error", err.Error(), "haveLastGood", s.cur.Load() != nil)
			if s.opts.OnReloadError != nil {
				s.opts.OnReloadError()
			}
		}
		return err
	}
	s.lastSeen = fp
	old := s.cur.Load()
	if old != nil && old.key == key && reflect.DeepEqual(old.Policy, pol) {
		return nil // touched but unchanged
	}
	next, err := NewSnapshot(key, pol)
	if err != nil {
		return err // unreachable: read checked the key
	}
	if old != nil && old.Limiter != nil && old.Policy.RateLimit == pol.RateLimit {
		next.Limiter = old.Limiter // keep the bucket's state across unrelated changes
	}
	s.cur.Store(next)
	s.loadOnce.Do(func() { close(s.loadedCh) })
	keyChanged := old == nil || old.key != key
	s.opts.Logger.Info("credentials loaded", "keyID", next.KeyID, "credential", pol.Credential,
		"allowedApps", len(pol.AllowedApps), "keyChanged", keyChanged, "first", old == nil)
	if s.opts.OnReload != nil {
		s.opts.OnReload()
	}
	for _, fn := range s.listeners {
		fn(old, next)
	}
	return nil
}

// fingerprint changes whenever the sources may have changed: the `..data`
// target in the atomic-writer layout, else file identity and mtimes.
func (s *Store) fingerprint() string {
	var b strings.Builder
	if s.opts.Dir != "" {
		if t, err := os.Readlink(filepath.Join(s.opts.Dir, DataLink)); err == nil {
			b.WriteString("data=" + t + ";")
		} else {
			statInto(&b, filepath.Join(s.opts.Dir, policy.KeyFile))
			statInto(&b, filepath.Join(s.opts.Dir, policy.PolicyFile))
		}
	}
	if s.opts.PolicyFile != "" {
		statInto(&b, s.opts.PolicyFile)
	}
	return b.String()
}

func statInto(b *strings.Builder, path string) {
	fi, err := os.Stat(path)
	if err != nil {
		fmt.Fprintf(b, "%s:missing;", path)
		return
	}
	fmt.Fprintf(b, "%s:%d:%d;", path, fi.Size(), fi.ModTime().UnixNano())
}

func (s *Store) read() (string, *policy.Policy, error) {
	var key string
	var pol *policy.Policy
	if s.opts.Dir != "" {
		// Read both files through one resolved `..data` target so they come
		// from the same Secret version even if kubelet swaps in between.
		base := s.opts.Dir
		if t, err := os.Readlink(filepath.Join(s.opts.Dir, DataLink)); err == nil {
			if !filepath.IsAbs(t) {
				t = filepath.Join(s.opts.Dir, t)
			}
			base = t
		}
		kb, err := os.ReadFile(filepath.Join(base, policy.KeyFile))
		if err != nil {
			return "", nil, fmt.Errorf("reading the key from %s: %w", s.opts.Dir, stripPathErr(err))
		}
		key = strings.TrimSpace(string(kb))
		pb, err := os.ReadFile(filepath.Join(base, policy.PolicyFile))
		switch {
		case err == nil:
			if pol, err = policy.Parse(pb); err != nil {
				return "", nil, fmt.Errorf("%s in %s: %w", policy.PolicyFile, s.opts.Dir, err)
			}
		case errors.Is(err, fs.ErrNotExist) && (s.opts.PolicyFile != "" || len(s.opts.AllowedApps) > 0):
		case errors.Is(err, fs.ErrNotExist):
			return "", nil, fmt.Errorf("%s has no %s: mount the FalCredential's managed Secret, or pass --allowed-app / --policy-file", s.opts.Dir, policy.PolicyFile)
		default:
			return "", nil, fmt.Errorf("reading %s: %w", policy.PolicyFile, err)
		}
	} else {
		key = strings.TrimSpace(s.opts.Getenv(s.opts.KeyEnv))
		if key == "" {
			return "", nil, fmt.Errorf("env var %s (--key-env) is empty: set it to key_id:key_secret", s.opts.KeyEnv)
		}
	}
	if _, err := checkKey(key); err != nil {
		return "", nil, err
	}
	if pol == nil {
		var err error
		if pol, err = s.flagPolicy(); err != nil {
			return "", nil, err
		}
	}
	return key, pol, nil
}

func (s *Store) flagPolicy() (*policy.Policy, error) {
	if s.opts.PolicyFile != "" {
		b, err := os.ReadFile(s.opts.PolicyFile)
		if err != nil {
			return nil, fmt.Errorf("reading --policy-file: %w", err)
		}
		p, err := policy.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("--policy-file %s: %w", s.opts.PolicyFile, err)
		}
		return p, nil
	}
	p := &policy.Policy{AllowedApps: append([]string(nil), s.opts.AllowedApps...)}
	p.Default()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("--allowed-app: %w", err)
	}
	return p, nil
}

// checkKey validates "key_id:key_secret" and returns the key id. Its errors
// describe the shape of the problem, never the content.
func checkKey(key string) (string, error) {
	id, secret, ok := strings.Cut(key, ":")
	if !ok || id == "" || secret == "" {
		return "", fmt.Errorf("the key (%d bytes) does not look like key_id:key_secret: put fal's full key in the Secret", len(key))
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c >= 0x7f {
			return "", fmt.Errorf("the key holds whitespace or a control character at byte %d: store only key_id:key_secret", i)
		}
	}
	return id, nil
}

// stripPathErr keeps the error kind without echoing file content.
func stripPathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", filepath.Base(pe.Path), pe.Err)
	}
	return err
}
