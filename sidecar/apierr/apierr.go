// Package apierr writes the sidecar's error responses: a JSON object with a
// human "message" (fal-js shows it as the ApiError message) and a stable
// machine "code" that apps and tests can switch on.
package apierr

import (
	"encoding/json"
	"net/http"
)

// Stable error codes. Never rename one: apps match on them.
const (
	CodeTargetMissing      = "target_missing"
	CodeTargetInvalid      = "target_invalid"
	CodeTargetNotAllowed   = "target_not_allowed"
	CodeAppNotAllowed      = "app_not_allowed"
	CodeBodyTooLarge       = "body_too_large"
	CodeBadRequest         = "bad_request"
	CodeRateLimited        = "rate_limited"
	CodeHostNotLoopback    = "host_not_loopback"
	CodeOriginNotAllowed   = "origin_not_allowed"
	CodeMethodNotAllowed   = "method_not_allowed"
	CodeNotFound           = "not_found"
	CodeNotReady           = "not_ready"
	CodeTooManyConnections = "too_many_connections"
	CodeShuttingDown       = "shutting_down"
	CodeUpstreamUnavail    = "upstream_unavailable"
	CodeUpstreamTimeout    = "upstream_timeout"
	CodeUpstreamKeyRefused = "upstream_key_refused"
	CodeUpstreamRateLimit  = "upstream_rate_limited"
	CodeUpstreamBadReply   = "upstream_bad_response"
)

// Error is the JSON body of every error the sidecar itself produces.
type Error struct {
	Message string `json:"message"`
	Code    string `json:"code"`
}

// Write sends status with {"message","code"}.
func Write(w http.ResponseWriter, status int, code, message string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Error{Message: message, Code: code})
}
