package server_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/falguard/falguard/hack/fakefal"
)

func (h *harness) dialRelay(path string) (*websocket.Conn, *http.Response, error) {
	h.t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial("ws"+strings.TrimPrefix(h.base, "http")+path, nil)
	if c != nil {
		h.t.Cleanup(func() { c.Close() })
	}
	return c, resp, err
}

func roundTripJSON(t *testing.T, c *websocket.Conn, in map[string]any) map[string]any {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteJSON(in); err != nil {
		t.Fatal(err)
	}
	mt, b, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if mt != websocket.TextMessage || json.Unmarshal(b, &out) != nil {
		t.Fatalf("answer type %d: %q", mt, b)
	}
	return out
}

func closeCode(err error) (int, string) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Text
	}
	return -1, err.Error()
}

func TestRelayBinaryTextPingAndClose(t *testing.T) {
	h := start(t)
	c, resp, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatalf("dial: %v %v", err, resp)
	}
	// Text frame (JSON) both ways.
	if out := roundTripJSON(t, c, map[string]any{"prompt": "a", "request_id": "r1"}); out["request_id"] != "r1" {
		t.Fatalf("text answer %v", out)
	}
	// Binary msgpack frame both ways, bytes intact.
	in, _ := msgpack.Marshal(map[string]any{"prompt": "b", "request_id": "r2"})
	if err := c.WriteMessage(websocket.BinaryMessage, in); err != nil {
		t.Fatal(err)
	}
	mt, b, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if mt != websocket.BinaryMessage || msgpack.Unmarshal(b, &out) != nil || out["request_id"] != "r2" {
		t.Fatalf("binary answer type %d: %v", mt, out)
	}
	images, _ := out["images"].([]any)
	if len(images) != 1 {
		t.Fatalf("no image in %v", out)
	}
	// Ping goes to fal; its pong comes back.
	pong := make(chan string, 1)
	c.SetPongHandler(func(d string) error { pong <- d; return nil })
	if err := c.WriteControl(websocket.PingMessage, []byte("hi"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	go func() { _, _, _ = c.ReadMessage() }() // pongs are processed while reading
	select {
	case d := <-pong:
		if d != "hi" {
			t.Fatalf("pong %q", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no pong")
	}
	calls := h.fal.Calls()
	last := calls[len(calls)-1]
	if last.Path != "/fal-ai/fast-lcm-diffusion/realtime" || last.KeyID != "kid1" || last.Status != 101 || !strings.Contains(last.Query, "fal_jwt_token=") {
		t.Fatalf("fal saw %+v", last)
	}
	if h.metric(`falguard_sidecar_realtime_connections_open`) != 1 || h.metric(`falguard_sidecar_relayed_messages_total{direction="app_to_fal"}`) != 2 {
		t.Fatalf("relay metrics:\n%s", h.metrics())
	}
}

func TestRelayFaults(t *testing.T) {
	for _, tc := range []struct {
		name       string
		fault      fakefal.Fault
		wantCode   int
		wantReason string
		errorFrame bool
	}{
		{"fal closes with an error code", fakefal.Fault{Host: "fal.run", CloseAfterMessages: 1, CloseCode: 4003, CloseReason: "model crashed"}, 4003, "model crashed", false},
		{"fal closes normally", fakefal.Fault{Host: "fal.run", CloseAfterMessages: 1, CloseCode: 1000, CloseReason: "done"}, 1000, "done", false},
		{"fal drops mid-stream", fakefal.Fault{Host: "fal.run", DropAfterMessages: 1}, 1011, "fal connection lost", false},
		{"fal error frame", fakefal.Fault{Host: "fal.run", ErrorFrameAfterMessages: 1}, 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t)
			h.fal.SetFault(tc.fault)
			c, _, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
			if err != nil {
				t.Fatal(err)
			}
			roundTripJSON(t, c, map[string]any{"prompt": "a"})
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, b, err := c.ReadMessage()
			if tc.errorFrame {
				if err != nil || !strings.Contains(string(b), "x-fal-error") {
					t.Fatalf("want an x-fal-error frame, got %q %v", b, err)
				}
				return
			}
			if code, reason := closeCode(err); code != tc.wantCode || reason != tc.wantReason {
				t.Fatalf("close %d %q, want %d %q", code, reason, tc.wantCode, tc.wantReason)
			}
			// The sidecar recovers by itself: the next session works.
			h.fal.ClearFaults()
			c2, _, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
			if err != nil {
				t.Fatal(err)
			}
			roundTripJSON(t, c2, map[string]any{"prompt": "again"})
			h.eventually("relay gauge back to 1", func() bool { return h.metric("falguard_sidecar_realtime_connections_open") == 1 })
		})
	}
}

func TestRelayAppCloseReachesFal(t *testing.T) {
	h := start(t)
	c, _, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatal(err)
	}
	roundTripJSON(t, c, map[string]any{"prompt": "a"})
	if err := c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye")); err != nil {
		t.Fatal(err)
	}
	// fal answers the forwarded close; the answer comes back through the relay.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = c.ReadMessage()
	// (fakefal, like gorilla's default, echoes the code without the reason.)
	if code, reason := closeCode(err); code != 4000 {
		t.Fatalf("close handshake answered with %d %q", code, reason)
	}
	h.eventually("relay closed", func() bool { return h.metric("falguard_sidecar_realtime_connections_open") == 0 })
}

func TestRelayRefusesBeforeDialing(t *testing.T) {
	h := start(t)
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/realtime/fal-ai/fast-sdxl", 403},
		{"/realtime/evil/fast-lcm-diffusion", 403},
		{"/realtime/fal-ai/flux", 403},
		{"/realtime/fal-ai/%2e%2e/x", 400},
		{"/realtime/fal-ai", 400},
	} {
		_, resp, err := h.dialRelay(tc.path)
		if err == nil || resp == nil || resp.StatusCode != tc.status {
			t.Errorf("%s: err %v resp %v, want %d", tc.path, err, resp, tc.status)
		}
	}
	if n := len(h.fal.Calls()); n != 0 {
		t.Fatalf("fal saw %d calls (tokens or dials) for refused apps", n)
	}
	// Plain HTTP to the relay gets a clear error.
	if st := h.status(h.base + "/realtime/fal-ai/fast-lcm-diffusion"); st != 400 {
		t.Fatalf("non-upgrade request: %d", st)
	}
}

func TestRelayMessageSizeCap(t *testing.T) {
	h := start(t, withPolicy(`{"version":1,"allowedApps":["fal-ai/fast-lcm-diffusion"],"maxRequestBytes":1024}`))
	c, _, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.BinaryMessage, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = c.ReadMessage()
	if code, _ := closeCode(err); code != websocket.CloseMessageTooBig {
		t.Fatalf("oversized message: close %d (%v), want 1009", code, err)
	}
}

func TestRelayRefreshesARefusedToken(t *testing.T) {
	h := start(t)
	if st := h.status(h.base + "/api/fal/token?app=fal-ai/fast-lcm-diffusion"); st != 200 {
		t.Fatal(st) // a token is now cached
	}
	// fal refuses the cached token once (as after a revocation it was not told about).
	h.fal.SetFault(fakefal.Fault{Host: "fal.run", RefuseKeyID: "kid1", Times: 1})
	c, resp, err := h.dialRelay("/realtime/fal-ai/fast-lcm-diffusion")
	if err != nil {
		t.Fatalf("relay did not recover from a refused token: %v %v", err, resp)
	}
	roundTripJSON(t, c, map[string]any{"prompt": "a"})
	if n := h.fal.CountCalls("rest.fal.ai", "/tokens/"); n != 2 {
		t.Fatalf("%d token mints, want 2 (the refused token replaced once)", n)
	}
}
