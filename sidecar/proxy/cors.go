package proxy

import (
	"net/http"
	"slices"

	"github.com/falguard/falguard/sidecar/apierr"
	"github.com/falguard/falguard/sidecar/policy"
)

// exposed are the response headers fal clients read; cross-origin they are
// invisible unless listed.
const exposed = "x-fal-request-id, x-fal-request-timeout-type, x-fal-error-type, content-type"

// OriginAllowed reports whether a browser origin may call the app API. A
// request without an Origin header is not a cross-origin browser request.
func OriginAllowed(pol *policy.Policy, origin string) bool {
	return origin == "" || slices.Contains(pol.CORS.AllowedOrigins, origin)
}

// cors applies the policy's CORS allowlist. It returns false when it has
// answered the request (a preflight, or an origin the policy does not allow).
func cors(w http.ResponseWriter, r *http.Request, pol *policy.Policy) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	w.Header().Add("Vary", "Origin")
	if !OriginAllowed(pol, origin) {
		apierr.Write(w, http.StatusForbidden, apierr.CodeOriginNotAllowed,
			"origin "+quoteASCII(origin)+" is not allowed: add it to the FalCredential's proxy.allowedOrigins")
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Expose-Headers", exposed)
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
		if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
			h.Set("Access-Control-Allow-Headers", req)
		}
		h.Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
		return false
	}
	return true
}

// quoteASCII quotes s for a message, dropping anything but printable ASCII.
func quoteASCII(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s) && i < 200; i++ {
		if c := s[i]; c >= ' ' && c < 0x7f && c != '"' {
			b = append(b, c)
		}
	}
	return string(append(b, '"'))
}
