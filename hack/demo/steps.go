package demo

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Steps prints what the harness does in plain words, one line per step with
// how long it took, and indented detail lines under it.
type Steps struct {
	w     io.Writer
	start time.Time

	mu      sync.Mutex
	n       int
	current string
	began   time.Time
}

// NewSteps prints to w.
func NewSteps(w io.Writer) *Steps { return &Steps{w: w, start: time.Now()} }

// Begin starts a step; End (or Fail) finishes it.
func (s *Steps) Begin(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	s.current = fmt.Sprintf(format, args...)
	s.began = time.Now()
	_, _ = fmt.Fprintf(s.w, "%s %2d. %s ...\n", s.stamp(), s.n, s.current)
}

// End finishes the current step with a short result.
func (s *Steps) End(format string, args ...any) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := time.Since(s.began)
	msg := fmt.Sprintf(format, args...)
	if msg != "" {
		msg = ": " + msg
	}
	_, _ = fmt.Fprintf(s.w, "%s     done in %s%s\n", s.stamp(), fmtDur(d), msg)
	return d
}

// Fail reports the current step as failed.
func (s *Steps) Fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = fmt.Fprintf(s.w, "%s     FAILED after %s: %s\n", s.stamp(), fmtDur(time.Since(s.began)), strings.ReplaceAll(err.Error(), "\n", "\n        "))
}

// Detail prints an indented line under the current step.
func (s *Steps) Detail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = fmt.Fprintf(s.w, "%s       %s\n", s.stamp(), fmt.Sprintf(format, args...))
}

// Say prints a free line (headers, the summary).
func (s *Steps) Say(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = fmt.Fprintf(s.w, format+"\n", args...)
}

// Elapsed is the time since the harness began.
func (s *Steps) Elapsed() time.Duration { return time.Since(s.start) }

func (s *Steps) stamp() string {
	return fmt.Sprintf("[%6s]", fmtDur(time.Since(s.start)))
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	default:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
}
