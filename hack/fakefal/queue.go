package fakefal

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

type queueRequest struct {
	id        string
	app       appRef
	input     map[string]any
	keyID     string
	polls     int // status answers given so far
	needed    int // status answers before COMPLETED
	cancelled bool
	created   time.Time
}

func (q *queueRequest) state() string {
	switch {
	case q.cancelled || q.polls >= q.needed:
		return "COMPLETED"
	case q.polls == 0:
		return "IN_QUEUE"
	default:
		return "IN_PROGRESS"
	}
}

// serveQueue serves queue.fal.run: submit, status, status/stream, result,
// cancel. URLs in answers use the caller's Host header (see externalBase).
func (s *Server) serveQueue(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	reqIdx := slices.Index(parts, "requests")
	if reqIdx >= 2 && reqIdx+1 < len(parts) {
		app, ok := parseApp(strings.Join(parts[:reqIdx], "/"))
		if !ok {
			writeDetail(w, http.StatusNotFound, "Application not found")
			return
		}
		id, tail := parts[reqIdx+1], strings.Join(parts[reqIdx+2:], "/")
		if _, ok := s.authenticate(w, r, HostQueue, true); !ok {
			return
		}
		s.mu.Lock()
		q, found := s.queue[id]
		s.mu.Unlock()
		if !found || q.app.owner != app.owner || q.app.alias != app.alias {
			if tail == "cancel" {
				writeJSON(w, http.StatusNotFound, map[string]any{"status": "NOT_FOUND"})
				return
			}
			writeDetail(w, http.StatusNotFound, "Request not found")
			return
		}
		switch {
		case tail == "status" && r.Method == http.MethodGet:
			s.serveQueueStatus(w, r, q)
		case tail == "status/stream" && r.Method == http.MethodGet:
			s.serveQueueStatusStream(w, r, q)
		case tail == "" && r.Method == http.MethodGet:
			s.serveQueueResult(w, r, q)
		case tail == "cancel" && r.Method == http.MethodPut:
			s.serveQueueCancel(w, q)
		default:
			writeDetail(w, http.StatusMethodNotAllowed, "Method Not Allowed")
		}
		return
	}
	app, ok := parseApp(r.URL.Path)
	if !ok {
		writeDetail(w, http.StatusNotFound, "Application not found: use /<owner>/<alias>[/path]")
		return
	}
	if r.Method != http.MethodPost {
		writeDetail(w, http.StatusMethodNotAllowed, "Method Not Allowed: submit with POST")
		return
	}
	auth, input, ok := s.appInput(w, r, HostQueue, app)
	if !ok {
		return
	}
	needed := defaultQueuePolls
	if _, set := input["queue_polls"]; set {
		needed = intField(input, "queue_polls")
	}
	q := &queueRequest{id: newRequestID(), app: app, input: input, keyID: auth.keyID, needed: needed, created: time.Now()}
	s.mu.Lock()
	s.queue[q.id] = q
	s.mu.Unlock()
	urls := queueURLs(r, q)
	w.Header().Set("x-fal-request-id", q.id)
	writeJSON(w, http.StatusOK, map[string]any{
		"request_id":         q.id,
		"gateway_request_id": q.id,
		"status":             "IN_QUEUE",
		"queue_position":     0,
		"response_url":       urls["response_url"],
		"status_url":         urls["status_url"],
		"cancel_url":         urls["cancel_url"],
	})
}

func queueURLs(r *http.Request, q *queueRequest) map[string]string {
	base := externalBase(r) + "/" + q.app.id() + "/requests/" + q.id
	return map[string]string{"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}
}

// advance answers one status poll: the state before this poll, then moves on.
func (s *Server) advance(q *queueRequest) (state string, position int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	state = q.state()
	if state != "COMPLETED" {
		q.polls++
	}
	return state, 0
}

func (s *Server) statusBody(r *http.Request, q *queueRequest, state string, withLogs bool) map[string]any {
	urls := queueURLs(r, q)
	body := map[string]any{
		"status":       state,
		"request_id":   q.id,
		"response_url": urls["response_url"],
		"status_url":   urls["status_url"],
		"cancel_url":   urls["cancel_url"],
		"logs":         nil,
	}
	if withLogs {
		logs := []map[string]any{}
		if state != "IN_QUEUE" {
			logs = append(logs, map[string]any{
				"message": "fakefal: running " + q.app.id(), "level": "INFO", "source": "user",
				"timestamp": q.created.UTC().Format(time.RFC3339Nano),
			})
		}
		body["logs"] = logs
	}
	switch state {
	case "IN_QUEUE":
		body["queue_position"] = 0
	case "COMPLETED":
		body["metrics"] = map[string]any{"inference_time": 0.01}
	}
	return body
}

func (s *Server) serveQueueStatus(w http.ResponseWriter, r *http.Request, q *queueRequest) {
	state, _ := s.advance(q)
	code := http.StatusAccepted
	if state == "COMPLETED" {
		code = http.StatusOK
	}
	w.Header().Set("x-fal-request-id", q.id)
	writeJSON(w, code, s.statusBody(r, q, state, r.URL.Query().Get("logs") == "1"))
}

// serveQueueStatusStream sends a status event per state until COMPLETED, then
// closes, as fal's /status/stream does.
func (s *Server) serveQueueStatusStream(w http.ResponseWriter, r *http.Request, q *queueRequest) {
	withLogs := r.URL.Query().Get("logs") == "1"
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("x-fal-request-id", q.id)
	w.WriteHeader(http.StatusOK)
	flush(w)
	for i := 0; i < 100; i++ { // bounded: at most 100 events
		state, _ := s.advance(q)
		b, _ := json.Marshal(s.statusBody(r, q, state, withLogs))
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return
		}
		flush(w)
		if state == "COMPLETED" {
			return
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
}

func (s *Server) serveQueueResult(w http.ResponseWriter, r *http.Request, q *queueRequest) {
	s.mu.Lock()
	state, cancelled := q.state(), q.cancelled
	s.mu.Unlock()
	w.Header().Set("x-fal-request-id", q.id)
	switch {
	case cancelled:
		writeDetail(w, http.StatusBadRequest, "Request was cancelled")
		return
	case state != "COMPLETED":
		writeDetail(w, http.StatusBadRequest, "Request is still in progress")
		return
	}
	if !applyInputControls(w, r, q.input) {
		return
	}
	writeOutput(w, q.input, q.id)
}

func (s *Server) serveQueueCancel(w http.ResponseWriter, q *queueRequest) {
	s.mu.Lock()
	done := q.state() == "COMPLETED"
	if !done {
		q.cancelled = true
	}
	s.mu.Unlock()
	if done {
		writeJSON(w, http.StatusBadRequest, map[string]any{"status": "ALREADY_COMPLETED"})
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"status": "CANCELLATION_REQUESTED"})
}
