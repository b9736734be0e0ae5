package fakefal

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// Input fields fakefal's fal.run and queue apps understand (everything else is
// echoed back):
//
//	fail_status     int  answer with this HTTP status and a fal-shaped error body
//	binary_bytes    int  answer with BinaryBody(n) as application/octet-stream
//	num_events      int  /stream: number of SSE events (default 3)
//	event_delay_ms  int  /stream: pause between events
//	sleep_ms        int  delay before answering
//	queue_polls     int  queue: status polls before COMPLETED (default 2)
//	error_code      string realtime: answer with an x-fal-error frame of this code
const (
	defaultNumEvents  = 3
	defaultQueuePolls = 2
	maxInputBytes     = 64 << 20
)

// BinaryBody is the deterministic body of a binary_bytes answer, so a test can
// check byte-exact delivery. Every byte value occurs, including 0 and 0xff.
func BinaryBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i*131 + i/256) & 0xff)
	}
	return b
}

// serveRun serves fal.run: sync runs, /stream SSE and the realtime WebSocket.
func (s *Server) serveRun(w http.ResponseWriter, r *http.Request) {
	app, ok := parseApp(r.URL.Path)
	if !ok {
		writeDetail(w, http.StatusNotFound, "Application not found: use /<owner>/<alias>[/path]")
		return
	}
	if websocket.IsWebSocketUpgrade(r) {
		s.serveRealtime(w, r, app)
		return
	}
	_, input, ok := s.appInput(w, r, HostRun, app)
	if !ok {
		return
	}
	reqID := newRequestID()
	w.Header().Set("x-fal-request-id", reqID)
	if !applyInputControls(w, r, input) {
		return
	}
	if app.path == "stream" || strings.HasSuffix(app.path, "/stream") {
		s.serveSSE(w, r, input, reqID)
		return
	}
	writeOutput(w, input, reqID)
}

// appInput authenticates a model call (key or JWT for the app) and reads
// its JSON input; on failure the answer is already written.
func (s *Server) appInput(w http.ResponseWriter, r *http.Request, host string, app appRef) (authResult, map[string]any, bool) {
	auth, ok := s.authenticate(w, r, host, true)
	if !ok {
		return auth, nil, false
	}
	if auth.jwt != nil && !slices.Contains(auth.jwt.AllowedApps, app.alias) {
		writeDetail(w, http.StatusForbidden, "token does not allow app "+app.alias)
		return auth, nil, false
	}
	input, ok := readInput(w, r)
	return auth, input, ok
}

// readInput decodes the JSON body (POST/PUT) or the query (GET) as an object.
func readInput(w http.ResponseWriter, r *http.Request) (map[string]any, bool) {
	input := map[string]any{}
	if r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodDelete {
		for k, v := range r.URL.Query() {
			if k == "fal_jwt_token" {
				continue
			}
			input[k] = v[0]
		}
		return input, true
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, maxInputBytes+1))
	if err != nil {
		writeDetail(w, http.StatusBadRequest, "reading request body: "+err.Error())
		return nil, false
	}
	if len(raw) > maxInputBytes {
		writeDetail(w, http.StatusRequestEntityTooLarge, "request body too large")
		return nil, false
	}
	if len(strings.TrimSpace(string(raw))) == 0 {
		return input, true
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		writeValidation(w, "body", "request body must be JSON: "+err.Error())
		return nil, false
	}
	if m, ok := v.(map[string]any); ok {
		return m, true
	}
	return map[string]any{"input": v}, true
}

// applyInputControls handles sleep_ms, fail_status and binary_bytes; it
// reports whether the caller should go on answering.
func applyInputControls(w http.ResponseWriter, r *http.Request, input map[string]any) bool {
	if ms := intField(input, "sleep_ms"); ms > 0 {
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return false
		}
	}
	if st := intField(input, "fail_status"); st >= 400 && st <= 599 {
		writeFailure(w, st)
		return false
	}
	if n := intField(input, "binary_bytes"); n > 0 {
		body := BinaryBody(n)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
		return false
	}
	return true
}

// writeFailure answers status with the body fal sends for it.
func writeFailure(w http.ResponseWriter, status int) {
	switch status {
	case http.StatusUnprocessableEntity:
		writeJSON(w, status, map[string]any{"detail": []map[string]any{{
			"loc": []string{"body", "prompt"}, "msg": "field required", "type": "value_error.missing",
		}}})
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
		writeDetail(w, status, "Rate limit exceeded")
	case http.StatusUnauthorized:
		writeDetail(w, status, "No user found for Key ID and Secret")
	case http.StatusGatewayTimeout:
		// The app's own timeout ran out: fal marks it so clients don't retry.
		w.Header().Set("x-fal-request-timeout-type", "user")
		writeDetail(w, status, "Request timed out")
	default:
		w.Header().Set("x-fal-error-type", "internal_error")
		writeDetail(w, status, http.StatusText(status))
	}
}

func writeOutput(w http.ResponseWriter, input map[string]any, reqID string) {
	out := make(map[string]any, len(input)+1)
	for k, v := range input {
		out[k] = v
	}
	out["request_id"] = reqID
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request, input map[string]any, reqID string) {
	n := defaultNumEvents
	if v, ok := input["num_events"]; ok && v != nil {
		n = intField(input, "num_events")
	}
	delay := time.Duration(intField(input, "event_delay_ms")) * time.Millisecond
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flush(w)
	for i := 0; i < n; i++ {
		if i > 0 && delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		ev := make(map[string]any, len(input)+3)
		for k, v := range input {
			ev[k] = v
		}
		ev["request_id"] = reqID
		ev["index"] = i
		ev["done"] = i == n-1
		b, _ := json.Marshal(ev)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return
		}
		flush(w)
	}
}

func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// intField reads a number from decoded JSON or msgpack.
func intField(m map[string]any, k string) int {
	switch v := m[k].(type) {
	case float64:
		return int(v)
	case int:
		return v
	case int8:
		return int(v)
	case int16:
		return int(v)
	case int32:
		return int(v)
	case int64:
		return int(v)
	case uint8:
		return int(v)
	case uint16:
		return int(v)
	case uint32:
		return int(v)
	case uint64:
		return int(v)
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return 0
}
