package fakefal

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// servePlatform serves api.fal.ai's Platform keys API; every call needs an
// ADMIN-scope key.
func (s *Server) servePlatform(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p != "/v1/keys" && !strings.HasPrefix(p, "/v1/keys/") {
		writeDetail(w, http.StatusNotFound, "Not Found")
		return
	}
	auth, ok := s.authenticate(w, r, HostAPI, false)
	if !ok {
		return
	}
	if !auth.admin {
		writeDetail(w, http.StatusForbidden, "This endpoint requires an ADMIN-scope key")
		return
	}
	id := strings.TrimPrefix(strings.TrimPrefix(p, "/v1/keys"), "/")
	switch {
	case id == "" && r.Method == http.MethodPost:
		s.createKey(w, r)
	case id == "" && r.Method == http.MethodGet:
		s.listKeys(w, r)
	case id != "" && !strings.Contains(id, "/") && r.Method == http.MethodDelete:
		// Idempotent, like fal: 204 also when the key does not exist.
		s.RevokeKey(id)
		w.WriteHeader(http.StatusNoContent)
	default:
		writeDetail(w, http.StatusMethodNotAllowed, "Method Not Allowed")
	}
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Alias string `json:"alias"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		writeValidation(w, "body", "request body must be JSON {\"alias\": \"...\"}: "+err.Error())
		return
	}
	if n := len(body.Alias); n < 1 || n > 255 {
		writeValidation(w, "alias", "alias must be 1..255 characters")
		return
	}
	id, secret := newRequestID(), randHex(32)
	key := id + ":" + secret
	_ = s.addKey(key, false, body.Alias, true)
	writeJSON(w, http.StatusOK, map[string]any{"key_id": id, "key_secret": secret, "key": key})
}

// listKeys pages keys oldest first; the cursor is an opaque offset.
func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": []map[string]any{{
				"loc": []string{"query", "limit"}, "msg": "limit must be an integer from 1 to 100", "type": "value_error",
			}}})
			return
		}
		limit = n
	}
	start := 0
	if c := q.Get("cursor"); c != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(c, "c"))
		if err != nil || n < 0 || !strings.HasPrefix(c, "c") {
			writeDetail(w, http.StatusBadRequest, "invalid cursor")
			return
		}
		start = n
	}
	s.mu.Lock()
	all := s.keyListLocked()
	s.mu.Unlock()
	keys := []map[string]any{}
	for i := start; i < len(all) && len(keys) < limit; i++ {
		scope := "API"
		if all[i].Admin {
			scope = "ADMIN"
		}
		keys = append(keys, map[string]any{
			"key_id": all[i].KeyID, "alias": all[i].Alias, "scope": scope,
			"created_at": all[i].CreatedAt.Format(time.RFC3339Nano),
		})
	}
	next := start + len(keys)
	var cursor any
	if next < len(all) {
		cursor = "c" + strconv.Itoa(next)
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": keys, "next_cursor": cursor, "has_more": next < len(all)})
}
