package fakefal

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// State is what the fakefal command writes to --state-file and serves at
// GET /state on its control API.
type State struct {
	URLs      map[string]string `json:"urls"`      // host -> base URL
	Overrides []string          `json:"overrides"` // for --upstream-override / --fal-upstream-override
	CAFile    string            `json:"caFile"`
	Control   string            `json:"control"` // control API base URL, "" when not serving one
}

// State describes the running server; control is the control API's base URL.
func (s *Server) State(control string) State {
	return State{URLs: s.URLs(), Overrides: s.Overrides(), CAFile: s.CAFile(), Control: control}
}

// NewKeyRequest is the body of POST /keys on the control API.
type NewKeyRequest struct {
	Key   string `json:"key,omitempty"` // "key_id:key_secret"; empty = generate one
	Admin bool   `json:"admin,omitempty"`
	Alias string `json:"alias,omitempty"`
}

// ControlHandler is the plain-HTTP control API for out-of-process users (the
// demo, e2e tests, benchmarks). Serve it on loopback only.
//
//	GET    /state         State
//	GET    /keys          []KeyInfo
//	POST   /keys          NewKeyRequest -> {"key_id","key_secret","key"}
//	DELETE /keys/{id}     revoke -> 204
//	GET    /calls         []Call (filters: ?host=&pathPrefix=)
//	DELETE /calls         forget recorded calls -> 204
//	GET    /faults        []Fault
//	POST   /faults        Fault -> 204
//	DELETE /faults        clear -> 204
func (s *Server) ControlHandler(controlURL string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.State(controlURL))
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Keys())
	})
	mux.HandleFunc("POST /keys", func(w http.ResponseWriter, r *http.Request) {
		var req NewKeyRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil && err != io.EOF {
			writeJSON(w, http.StatusBadRequest, map[string]string{"message": "body must be JSON {\"key\":\"id:secret\",\"admin\":bool,\"alias\":\"...\"}: " + err.Error()})
			return
		}
		if req.Key == "" {
			req.Key = newRequestID() + ":" + randHex(32)
		}
		if err := s.addKey(req.Key, req.Admin, req.Alias, false); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"message": err.Error()})
			return
		}
		id, secret, _ := strings.Cut(req.Key, ":")
		writeJSON(w, http.StatusOK, map[string]string{"key_id": id, "key_secret": secret, "key": req.Key})
	})
	mux.HandleFunc("DELETE /keys/{id}", func(w http.ResponseWriter, r *http.Request) {
		s.RevokeKey(r.PathValue("id"))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /calls", func(w http.ResponseWriter, r *http.Request) {
		host, prefix := r.URL.Query().Get("host"), r.URL.Query().Get("pathPrefix")
		out := []Call{}
		for _, c := range s.Calls() {
			if (host == "" || c.Host == host) && strings.HasPrefix(c.Path, prefix) {
				out = append(out, c)
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("DELETE /calls", func(w http.ResponseWriter, r *http.Request) {
		s.ResetCalls()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /faults", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Faults())
	})
	mux.HandleFunc("POST /faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&f); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"message": "body must be a JSON Fault: " + err.Error()})
			return
		}
		s.SetFault(f)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}
