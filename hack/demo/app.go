package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// App drives the demo app container (hack/demo/js/app.mjs, fal's official
// client) over its stdin/stdout: one JSON command per line in, one JSON reply
// or event per line out.
type App struct {
	in io.Writer

	mu      sync.Mutex
	nextID  int
	pending map[int]chan json.RawMessage
	events  []AppEvent
	ready   chan struct{}
	closed  chan struct{}
	readErr error
}

// AppEvent is an unsolicited line from the app (ws-open, rt-result, ...).
type AppEvent struct {
	Time  time.Time
	Event string
	Raw   json.RawMessage
}

// AppError is a failed command, as the official client reported it.
type AppError struct {
	Op      string          `json:"-"`
	Status  int             `json:"status"`
	Message string          `json:"message"`
	Body    json.RawMessage `json:"body"`
}

func (e *AppError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("app %s: status %d: %s", e.Op, e.Status, e.Message)
	}
	return fmt.Sprintf("app %s: %s", e.Op, e.Message)
}

// NewApp reads replies from out and sends commands to in.
func NewApp(in io.Writer, out io.Reader) *App {
	a := &App{in: in, pending: map[int]chan json.RawMessage{}, ready: make(chan struct{}), closed: make(chan struct{})}
	go a.read(out)
	return a
}

func (a *App) read(out io.Reader) {
	defer close(a.closed)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	readyOnce := sync.Once{}
	for sc.Scan() {
		line := append([]byte(nil), sc.Bytes()...)
		var head struct {
			ID    *int   `json:"id"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			continue // not ours (a library printing to stdout); the log has it
		}
		if head.ID != nil {
			a.mu.Lock()
			ch := a.pending[*head.ID]
			delete(a.pending, *head.ID)
			a.mu.Unlock()
			if ch != nil {
				ch <- line
			}
			continue
		}
		if head.Event == "ready" {
			readyOnce.Do(func() { close(a.ready) })
		}
		a.mu.Lock()
		a.events = append(a.events, AppEvent{Time: time.Now(), Event: head.Event, Raw: line})
		a.mu.Unlock()
	}
	a.readErr = sc.Err()
}

// WaitReady waits for the app's "ready" line.
func (a *App) WaitReady(ctx context.Context) error {
	select {
	case <-a.ready:
		return nil
	case <-a.closed:
		return fmt.Errorf("the app exited before it was ready: %s", a.fatal())
	case <-ctx.Done():
		return fmt.Errorf("waiting for the app to start: %w", context.Cause(ctx))
	}
}

func (a *App) fatal() string {
	for _, e := range a.Events("fatal") {
		var f struct{ Message string }
		_ = json.Unmarshal(e.Raw, &f)
		return f.Message
	}
	return "see its log"
}

// Events returns the events named name ("" = all) received so far.
func (a *App) Events(name string) []AppEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []AppEvent
	for _, e := range a.events {
		if name == "" || e.Event == name {
			out = append(out, e)
		}
	}
	return out
}

// Call runs op with args and decodes the reply into out (may be nil). A reply
// with ok=false comes back as *AppError.
func (a *App) Call(ctx context.Context, op string, args any, out any) error {
	a.mu.Lock()
	a.nextID++
	id := a.nextID
	ch := make(chan json.RawMessage, 1)
	a.pending[id] = ch
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.pending, id)
		a.mu.Unlock()
	}()
	line, err := json.Marshal(map[string]any{"id": id, "op": op, "args": args})
	if err != nil {
		return fmt.Errorf("encoding app command %s: %w", op, err)
	}
	if _, err := a.in.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("sending %s to the app: %w", op, err)
	}
	select {
	case raw := <-ch:
		var head struct {
			OK bool `json:"ok"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return fmt.Errorf("app reply to %s: %w", op, err)
		}
		if !head.OK {
			e := &AppError{Op: op}
			_ = json.Unmarshal(raw, e)
			return e
		}
		if out != nil {
			if err := json.Unmarshal(raw, out); err != nil {
				return fmt.Errorf("decoding app reply to %s: %w", op, err)
			}
		}
		return nil
	case <-a.closed:
		return fmt.Errorf("app %s: the app exited (%w)", op, a.readErr)
	case <-ctx.Done():
		return fmt.Errorf("app %s: %w", op, context.Cause(ctx))
	}
}

// TrafficStats is what the app counted while traffic ran.
type TrafficStats struct {
	Ticks       int        `json:"ticks"`
	ProxyOK     int        `json:"proxyOK"`
	ProxyFailed int        `json:"proxyFailed"`
	ProxyErrors []AppError `json:"proxyErrors"`
	Realtime    RTStats    `json:"realtime"`
	Sockets     Sockets    `json:"sockets"`
	// SocketsDuring counts sockets opened and closed after the traffic's own
	// session was up: both stay 0 unless a connection dropped.
	SocketsDuring Sockets `json:"socketsDuring"`
}

// RTStats counts one realtime connection's messages.
type RTStats struct {
	Sent       int        `json:"sent"`
	Results    int        `json:"results"`
	Distinct   int        `json:"distinct"`
	Errors     []AppError `json:"errors"`
	ErrorCount int        `json:"errorCount"`
}

// Sockets counts the WebSockets the official client opened through the relay.
type Sockets struct {
	Opened int `json:"opened"`
	Open   int `json:"open"`
	Closed int `json:"closed"`
	Closes []struct {
		Code   int    `json:"code"`
		Reason string `json:"reason"`
	} `json:"closes"`
}

// TokenReply is what the app saw from GET FAL_TOKEN_URL (never the token).
type TokenReply struct {
	Status    int    `json:"status"`
	HasToken  bool   `json:"hasToken"`
	ExpiresAt any    `json:"expiresAt"`
	App       string `json:"app"`
}

// RunReply is a model result summary.
type RunReply struct {
	Data      map[string]any `json:"data"`
	RequestID string         `json:"requestId"`
	Updates   []string       `json:"updates"`
	Events    int            `json:"events"`
}
