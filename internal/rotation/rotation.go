// Package rotation holds the controller's timing decisions as pure functions
// of an injected clock: when a key is due for rotation, when the previous key
// may be revoked, how long to back off after a fal error, and when to look
// again. The controller requeues at the time these return instead of polling.
package rotation

import (
	"math/rand/v2"
	"time"
)

// Clock tells the time; tests inject a fake one.
type Clock interface{ Now() time.Time }

// RealClock is the wall clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// FakeClock is a settable clock for tests.
type FakeClock struct{ T time.Time }

// Now returns the fake time.
func (f *FakeClock) Now() time.Time { return f.T }

// Step moves the fake clock forward.
func (f *FakeClock) Step(d time.Duration) { f.T = f.T.Add(d) }

// Why a rotation is due.
const (
	DueNoKey     = "NoKey"     // rotation creates the first key
	DueForced    = "Forced"    // falguard.dev/rotate-now changed
	DueScheduled = "Scheduled" // every has elapsed
)

// State is what the rotation decision needs to know.
type State struct {
	HaveKey       bool      // a usable key is published
	PublishedAt   time.Time // when the current key was first published (zero: unknown)
	Every         time.Duration
	RotateNow     string // current falguard.dev/rotate-now annotation value
	LastRotateNow string // the value last acted on
}

// NextRotation is when the current key is due; zero when there is no key
// (rotate at once) or no schedule.
func NextRotation(s State) time.Time {
	if !s.HaveKey || s.Every <= 0 || s.PublishedAt.IsZero() {
		return time.Time{}
	}
	return s.PublishedAt.Add(s.Every)
}

// Due reports whether to rotate now, and why.
func Due(now time.Time, s State) (bool, string) {
	switch {
	case !s.HaveKey:
		return true, DueNoKey
	case s.RotateNow != "" && s.RotateNow != s.LastRotateNow:
		return true, DueForced
	}
	next := NextRotation(s)
	if !next.IsZero() && !now.Before(next) {
		return true, DueScheduled
	}
	return false, ""
}

// RevokeAt is when a key replaced at publishedAt may be deleted.
func RevokeAt(publishedAt time.Time, grace time.Duration) time.Time {
	if grace < 0 {
		grace = 0
	}
	return publishedAt.Add(grace)
}

// RevokeDue reports whether a previous key whose grace ends at revokeAt may be
// deleted now. A zero revokeAt (unknown) means now: better to revoke an old key
// than to keep it alive forever.
func RevokeDue(now, revokeAt time.Time) bool {
	return revokeAt.IsZero() || !now.Before(revokeAt)
}

// Backoff is the wait before retry number attempt (1-based) after a fal
// error: exponential from base, capped at max, with "equal jitter" (half fixed,
// half random) so a fleet of credentials failing together spreads out.
// rnd returns a float in [0,1); nil uses math/rand. hint (fal's Retry-After)
// is honoured as a floor.
func Backoff(attempt int, base, max, hint time.Duration, rnd func() float64) time.Duration {
	if rnd == nil {
		rnd = rand.Float64
	}
	if attempt < 1 {
		attempt = 1
	}
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	d = d/2 + time.Duration(rnd()*float64(d/2))
	if hint > d {
		d = hint
	}
	return d
}

// Spread returns a delay in [0, window) derived from rnd, used to spread a
// burst of work (e.g. a thousand verifications at start-up) over a window.
func Spread(window time.Duration, rnd func() float64) time.Duration {
	if window <= 0 {
		return 0
	}
	if rnd == nil {
		rnd = rand.Float64
	}
	return time.Duration(rnd() * float64(window))
}

// Requeue returns how long to wait until the earliest of the future times
// (zero times are ignored), and false when there is nothing to wait for.
// Times already past give a wait of zero.
func Requeue(now time.Time, times ...time.Time) (time.Duration, bool) {
	var best time.Time
	for _, t := range times {
		if t.IsZero() {
			continue
		}
		if best.IsZero() || t.Before(best) {
			best = t
		}
	}
	if best.IsZero() {
		return 0, false
	}
	d := best.Sub(now)
	if d < 0 {
		d = 0
	}
	return d, true
}
