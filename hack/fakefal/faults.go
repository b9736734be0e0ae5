package fakefal

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Fault is one fault-injection rule. Rules apply to every host; the first
// matching rule with an HTTP effect (Latency, Status, Drop) decides how a
// request is answered, and latencies of all matching rules add up.
type Fault struct {
	Host       string `json:"host,omitempty"`       // canonical host, e.g. "fal.run"; "" = any
	PathPrefix string `json:"pathPrefix,omitempty"` // "" = any

	Latency    time.Duration `json:"latency,omitempty"`    // delay before answering (JSON: "250ms" or nanoseconds)
	Status     int           `json:"status,omitempty"`     // answer with this status instead (429, 500, 503...)
	Body       string        `json:"body,omitempty"`       // body for Status (default: fal-style {"detail": ...})
	RetryAfter string        `json:"retryAfter,omitempty"` // Retry-After header for Status
	Drop       bool          `json:"drop,omitempty"`       // close the TCP connection without answering

	RefuseKeyID string `json:"refuseKeyID,omitempty"` // answer 401 for calls authenticated by this key id

	Times int `json:"times,omitempty"` // apply this many times, 0 = until cleared

	// Realtime WebSocket faults, counted in messages the client sent on one
	// connection (the fault fires after fakefal answered the Nth).
	CloseAfterMessages      int    `json:"closeAfterMessages,omitempty"` // with CloseCode: close after N messages (0 = right after the upgrade)
	CloseCode               int    `json:"closeCode,omitempty"`
	CloseReason             string `json:"closeReason,omitempty"`
	DropAfterMessages       int    `json:"dropAfterMessages,omitempty"`       // drop the TCP connection after N messages
	ErrorFrameAfterMessages int    `json:"errorFrameAfterMessages,omitempty"` // send an x-fal-error frame after N messages
}

// UnmarshalJSON accepts latency as a Go duration string ("250ms") or as
// nanoseconds, so the control API is usable from curl and from Go alike.
func (f *Fault) UnmarshalJSON(b []byte) error {
	type plain Fault
	var aux struct {
		plain
		Latency json.RawMessage `json:"latency,omitempty"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*f = Fault(aux.plain)
	f.Latency = 0
	if len(aux.Latency) == 0 || string(aux.Latency) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(aux.Latency, &s); err == nil {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("fault latency %q: %w (use a Go duration such as \"250ms\")", s, err)
		}
		f.Latency = d
		return nil
	}
	var n int64
	if err := json.Unmarshal(aux.Latency, &n); err != nil {
		return fmt.Errorf("fault latency must be a duration string such as \"250ms\" or nanoseconds: %w", err)
	}
	f.Latency = time.Duration(n)
	return nil
}

// MarshalJSON writes latency as a duration string.
func (f Fault) MarshalJSON() ([]byte, error) {
	type plain Fault
	aux := struct {
		plain
		Latency string `json:"latency,omitempty"`
	}{plain: plain(f)}
	if f.Latency > 0 {
		aux.Latency = f.Latency.String()
	}
	return json.Marshal(aux)
}

func (f Fault) hasHTTP() bool { return f.Latency > 0 || f.Status != 0 || f.Drop }

func (f Fault) hasWS() bool {
	return f.CloseCode != 0 || f.DropAfterMessages > 0 || f.ErrorFrameAfterMessages > 0
}

type faultRule struct {
	Fault
	left int // remaining applications when Times > 0
}

func (f Fault) matches(host, path string) bool {
	return (f.Host == "" || f.Host == host) && strings.HasPrefix(path, f.PathPrefix)
}

// SetFault adds a fault rule.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &faultRule{Fault: f, left: f.Times})
}

// ClearFaults removes every fault rule.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Faults lists the active fault rules.
func (s *Server) Faults() []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Fault, 0, len(s.faults))
	for _, r := range s.faults {
		out = append(out, r.Fault)
	}
	return out
}

// takeFaults returns the matching rules selected by want and consumes one
// application of each.
func (s *Server) takeFaults(host, path string, want func(Fault) bool) []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Fault
	kept := s.faults[:0]
	for _, r := range s.faults {
		if want(r.Fault) && r.matches(host, path) {
			out = append(out, r.Fault)
			if r.Times > 0 {
				r.left--
				if r.left <= 0 {
					continue
				}
			}
		}
		kept = append(kept, r)
	}
	s.faults = kept
	return out
}
