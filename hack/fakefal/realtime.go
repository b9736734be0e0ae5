package fakefal

import (
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/vmihailenco/msgpack/v5"
)

// maxRealtimeMessage caps one inbound realtime message.
const maxRealtimeMessage = 16 << 20

// fakeJPEG is a tiny JPEG-shaped payload (SOI ... EOI) returned as the
// "image" of every realtime result, so clients that draw results get bytes.
var fakeJPEG = []byte{0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 'J', 'F', 'I', 'F', 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0xff, 0xd9}

type wsConn struct {
	conn *websocket.Conn
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 4096,
	// fal accepts browser origins; so does the fake.
	CheckOrigin: func(*http.Request) bool { return true },
}

// serveRealtime is fal's realtime WebSocket: the JWT (fal_jwt_token) or an
// Authorization: Key header is checked before the upgrade (401 for a bad,
// expired or revoked token, 403 for an app the token does not allow).
func (s *Server) serveRealtime(w http.ResponseWriter, r *http.Request, app appRef) {
	auth, ok := s.authenticate(w, r, HostRun, true)
	if !ok {
		return
	}
	if auth.jwt != nil && !slices.Contains(auth.jwt.AllowedApps, app.alias) {
		writeDetail(w, http.StatusForbidden, "token does not allow app "+app.alias)
		return
	}
	faults := s.takeFaults(HostRun, r.URL.Path, Fault.hasWS)
	rec := recFrom(r)
	conn, err := upgrader.Upgrade(rec, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	c := &wsConn{conn: conn}
	s.mu.Lock()
	s.wsConns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.wsConns, c)
		s.mu.Unlock()
		_ = conn.Close()
	}()
	conn.SetReadLimit(maxRealtimeMessage)

	var writeMu sync.Mutex
	write := func(mt int, b []byte) error {
		writeMu.Lock()
		defer writeMu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return conn.WriteMessage(mt, b)
	}
	if s.applyWSFaults(conn, faults, 0, write) {
		return
	}
	for n := 1; ; n++ {
		mt, data, err := conn.ReadMessage()
		if err != nil {
			return
		}
		var out []byte
		outType := mt
		input := map[string]any{}
		var decodeErr error
		if mt == websocket.BinaryMessage {
			decodeErr = msgpack.Unmarshal(data, &input)
		} else {
			decodeErr = json.Unmarshal(data, &input)
		}
		switch {
		case decodeErr != nil:
			outType, out = websocket.TextMessage, errorFrame("INVALID_INPUT", "message must be a msgpack (binary) or JSON (text) map: "+decodeErr.Error())
		case input["error_code"] != nil:
			code, _ := input["error_code"].(string)
			outType, out = websocket.TextMessage, errorFrame(code, "fakefal: error requested by input")
		default:
			out, err = realtimeResult(input, mt == websocket.BinaryMessage)
			if err != nil {
				outType, out = websocket.TextMessage, errorFrame("INTERNAL_ERROR", "encoding result: "+err.Error())
			}
		}
		if err := write(outType, out); err != nil {
			return
		}
		if s.applyWSFaults(conn, faults, n, write) {
			return
		}
	}
}

// applyWSFaults runs the faults due after n messages; it reports whether the
// connection is finished.
func (s *Server) applyWSFaults(conn *websocket.Conn, faults []Fault, n int, write func(int, []byte) error) bool {
	for _, f := range faults {
		if f.ErrorFrameAfterMessages > 0 && f.ErrorFrameAfterMessages == n {
			_ = write(websocket.TextMessage, errorFrame("SERVER_ERROR", "fakefal injected error frame"))
		}
		if f.DropAfterMessages > 0 && f.DropAfterMessages == n {
			if tcp, ok := conn.NetConn().(*net.TCPConn); ok {
				_ = tcp.SetLinger(0)
			}
			_ = conn.NetConn().Close()
			return true
		}
		if f.CloseCode != 0 && f.CloseAfterMessages == n {
			msg := websocket.FormatCloseMessage(f.CloseCode, f.CloseReason)
			_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			// Wait briefly for the peer's close reply so the close is clean.
			_ = conn.SetReadDeadline(time.Now().Add(time.Second))
			for {
				if _, _, err := conn.ReadMessage(); err != nil {
					break
				}
			}
			return true
		}
	}
	return false
}

// errorFrame is fal's realtime error frame.
func errorFrame(code, reason string) []byte {
	b, _ := json.Marshal(map[string]any{"type": "x-fal-error", "error": code, "reason": reason})
	return b
}

// realtimeResult echoes input with a request_id, an image and timings: msgpack
// (image bytes as bin) for binary frames, JSON (image as a data URL) for text.
func realtimeResult(input map[string]any, binary bool) ([]byte, error) {
	out := make(map[string]any, len(input)+3)
	for k, v := range input {
		out[k] = v
	}
	if id, ok := input["request_id"].(string); !ok || id == "" {
		out["request_id"] = newRequestID()
	}
	out["timings"] = map[string]any{"inference": 0.001}
	if binary {
		out["images"] = []any{map[string]any{"content": fakeJPEG, "content_type": "image/jpeg", "width": 1, "height": 1}}
		return msgpack.Marshal(out)
	}
	out["images"] = []any{map[string]any{
		"url":          "data:image/jpeg;base64," + base64.StdEncoding.EncodeToString(fakeJPEG),
		"content_type": "image/jpeg", "width": 1, "height": 1,
	}}
	return json.Marshal(out)
}
