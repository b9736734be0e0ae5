package rotation

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func TestDue(t *testing.T) {
	clock := &FakeClock{T: t0}
	every := 720 * time.Hour
	tests := []struct {
		name    string
		advance time.Duration
		s       State
		want    bool
		why     string
	}{
		{"no key yet", 0, State{HaveKey: false, Every: every}, true, DueNoKey},
		{"fresh key", time.Hour, State{HaveKey: true, PublishedAt: t0, Every: every}, false, ""},
		{"one second before due", every - time.Second, State{HaveKey: true, PublishedAt: t0, Every: every}, false, ""},
		{"exactly due", every, State{HaveKey: true, PublishedAt: t0, Every: every}, true, DueScheduled},
		{"overdue", 2 * every, State{HaveKey: true, PublishedAt: t0, Every: every}, true, DueScheduled},
		{"forced by a new annotation value", time.Minute, State{HaveKey: true, PublishedAt: t0, Every: every, RotateNow: "2", LastRotateNow: "1"}, true, DueForced},
		{"annotation already acted on", time.Minute, State{HaveKey: true, PublishedAt: t0, Every: every, RotateNow: "2", LastRotateNow: "2"}, false, ""},
		{"annotation removed", time.Minute, State{HaveKey: true, PublishedAt: t0, Every: every, RotateNow: "", LastRotateNow: "2"}, false, ""},
		{"unknown publish time never schedules", every * 3, State{HaveKey: true, Every: every}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := *clock
			c.Step(tt.advance)
			got, why := Due(c.Now(), tt.s)
			if got != tt.want || why != tt.why {
				t.Fatalf("Due = %v %q, want %v %q", got, why, tt.want, tt.why)
			}
		})
	}
}

func TestNextRotation(t *testing.T) {
	if got := NextRotation(State{HaveKey: true, PublishedAt: t0, Every: time.Hour}); !got.Equal(t0.Add(time.Hour)) {
		t.Fatalf("NextRotation = %v", got)
	}
	if got := NextRotation(State{HaveKey: false, PublishedAt: t0, Every: time.Hour}); !got.IsZero() {
		t.Fatalf("NextRotation without key = %v, want zero", got)
	}
}

func TestRevoke(t *testing.T) {
	clock := &FakeClock{T: t0}
	revokeAt := RevokeAt(t0, 10*time.Minute)
	tests := []struct {
		name    string
		advance time.Duration
		at      time.Time
		want    bool
	}{
		{"inside grace", 9 * time.Minute, revokeAt, false},
		{"grace just ended", 10 * time.Minute, revokeAt, true},
		{"long after", 48 * time.Hour, revokeAt, true},
		{"unknown revoke time revokes", 0, time.Time{}, true},
		{"zero grace", 0, RevokeAt(t0, 0), true},
		{"negative grace is zero", 0, RevokeAt(t0, -time.Minute), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := *clock
			c.Step(tt.advance)
			if got := RevokeDue(c.Now(), tt.at); got != tt.want {
				t.Fatalf("RevokeDue = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	base, max := 2*time.Second, 5*time.Minute
	tests := []struct {
		name    string
		attempt int
		rnd     float64
		hint    time.Duration
		want    time.Duration
	}{
		{"first, no jitter", 1, 0, 0, time.Second},
		{"first, full jitter", 1, 0.999999, 0, 2 * time.Second},
		{"third doubles twice", 3, 0, 0, 4 * time.Second},
		{"capped", 30, 0, 0, max / 2},
		{"capped, max jitter", 30, 0.999999, 0, max},
		{"zero attempt treated as first", 0, 0, 0, time.Second},
		{"retry-after is a floor", 1, 0, 30 * time.Second, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Backoff(tt.attempt, base, max, tt.hint, func() float64 { return tt.rnd })
			// allow for float rounding at the top of the jitter range
			if d := got - tt.want; d < -time.Millisecond || d > time.Millisecond {
				t.Fatalf("Backoff = %v, want %v", got, tt.want)
			}
		})
	}
	// real randomness stays in bounds
	for i := 0; i < 1000; i++ {
		if d := Backoff(4, base, max, 0, nil); d < 8*time.Second || d > 16*time.Second {
			t.Fatalf("Backoff(4) = %v, out of [8s,16s]", d)
		}
	}
}

func TestSpread(t *testing.T) {
	if d := Spread(10*time.Second, func() float64 { return 0.5 }); d != 5*time.Second {
		t.Fatalf("Spread = %v", d)
	}
	if d := Spread(0, nil); d != 0 {
		t.Fatalf("Spread(0) = %v", d)
	}
}

func TestRequeue(t *testing.T) {
	tests := []struct {
		name  string
		times []time.Time
		want  time.Duration
		ok    bool
	}{
		{"nothing", nil, 0, false},
		{"only zeros", []time.Time{{}, {}}, 0, false},
		{"earliest wins", []time.Time{t0.Add(time.Hour), {}, t0.Add(time.Minute)}, time.Minute, true},
		{"past is now", []time.Time{t0.Add(-time.Hour)}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Requeue(t0, tt.times...)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("Requeue = %v %v, want %v %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}
