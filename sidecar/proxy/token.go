package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/falguard/falguard/sidecar/apierr"
	"github.com/falguard/falguard/sidecar/credentials"
	"github.com/falguard/falguard/sidecar/target"
	"github.com/falguard/falguard/sidecar/tokencache"
)

// TokenResponse is GET /api/fal/token's body: fal's documented tokenProvider
// shape.
type TokenResponse struct {
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"` // RFC 3339, UTC
	App       string `json:"app"`
}

// serveProxiedToken answers x-fal-target-url: https://rest.fal.ai/tokens/
// from the cache, in fal's shape (a bare JSON string), so fal-js
// realtime.connect with proxyUrl works without a tokenProvider.
func (h *Handler) serveProxiedToken(w http.ResponseWriter, r *http.Request, snap *credentials.Snapshot) {
	if r.Method != http.MethodPost {
		apierr.Write(w, http.StatusMethodNotAllowed, apierr.CodeMethodNotAllowed, "token requests must be POST")
		return
	}
	var req struct {
		AllowedApps []string `json:"allowed_apps"`
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return // the app went away
	}
	if err := json.Unmarshal(raw, &req); err != nil || len(req.AllowedApps) != 1 {
		apierr.Write(w, http.StatusBadRequest, apierr.CodeBadRequest,
			`token request body must be {"allowed_apps":["<alias>"],"token_expiration":<seconds>} with exactly one app`)
		return
	}
	alias := req.AllowedApps[0]
	app, ok := snap.Policy.MatchAlias(alias)
	if !ok {
		apierr.Write(w, http.StatusBadRequest, apierr.CodeAppNotAllowed,
			fmt.Sprintf("app alias %s is not in this credential's allowedApps: add it to the FalCredential", quoteASCII(alias)))
		return
	}
	tok, ok := h.tokenFor(r.Context(), w, snap, alias, app)
	if !ok {
		return
	}
	b, _ := json.Marshal(tok.Value)
	_, _ = w.Write(b)
}

// ServeToken is GET /api/fal/token?app=<app id>.
func (h *Handler) ServeToken(w http.ResponseWriter, r *http.Request) {
	snap := h.snapshot(w)
	if snap == nil || !cors(w, r, snap.Policy) {
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, OPTIONS")
		apierr.Write(w, http.StatusMethodNotAllowed, apierr.CodeMethodNotAllowed, "use GET /api/fal/token?app=<owner/alias>")
		return
	}
	id := strings.Trim(r.URL.Query().Get("app"), "/")
	segs := strings.Split(id, "/")
	ns, owner, alias, _, ok := target.AppID(segs)
	if !ok || !target.ValidSegments(segs) {
		apierr.Write(w, http.StatusBadRequest, apierr.CodeBadRequest,
			"query parameter app must be a fal app id like fal-ai/fast-lcm-diffusion (optionally with a path)")
		return
	}
	var app string
	if ns != "" {
		app, ok = snap.Policy.MatchEndpoint(ns + "/" + owner + "/" + alias)
	} else {
		app, ok = snap.Policy.MatchApp(owner, alias)
	}
	if !ok {
		apierr.Write(w, http.StatusForbidden, apierr.CodeAppNotAllowed,
			fmt.Sprintf("app %s is not in this credential's allowedApps: add it to the FalCredential", quoteASCII(id)))
		return
	}
	tok, ok := h.tokenFor(r.Context(), w, snap, alias, app)
	if !ok {
		return
	}
	_ = json.NewEncoder(w).Encode(TokenResponse{Token: tok.Value, ExpiresAt: tok.Expires.UTC().Format(time.RFC3339), App: id})
}

// tokenFor counts a token request against the allowlist pattern app and gets
// the token; on success the JSON response headers are set, on failure the
// error is already written.
func (h *Handler) tokenFor(ctx context.Context, w http.ResponseWriter, snap *credentials.Snapshot, alias, app string) (tokencache.Token, bool) {
	h.Metrics.AppRequests.WithLabelValues(app).Inc()
	tok, ok := h.token(ctx, w, snap, alias)
	if !ok {
		h.Metrics.AppErrors.WithLabelValues(app).Inc()
		return tok, false
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return tok, true
}

// token gets a token from the cache or writes the error the app can act on.
func (h *Handler) token(ctx context.Context, w http.ResponseWriter, snap *credentials.Snapshot, alias string) (tokencache.Token, bool) {
	tok, err := h.Tokens.Get(ctx, alias, time.Duration(snap.Policy.TokenTTLSeconds)*time.Second)
	if err == nil {
		return tok, true
	}
	if ctx.Err() != nil {
		return tok, false
	}
	h.Log.Warn("no realtime token", "alias", alias, "error", strings.ReplaceAll(err.Error(), snap.Secret(), "***"))
	WriteTokenError(w, err, snap.Secret())
	return tok, false
}

// WriteTokenError maps a token-cache failure to a status the app can act on.
func WriteTokenError(w http.ResponseWriter, err error, secret string) {
	var ue *tokencache.UpstreamError
	switch {
	case errors.As(err, &ue) && (ue.Status == http.StatusUnauthorized || ue.Status == http.StatusForbidden):
		apierr.Write(w, http.StatusBadGateway, apierr.CodeUpstreamKeyRefused,
			fmt.Sprintf("fal refused the sidecar's key (HTTP %d) when minting a token: check the FalCredential's key and its status", ue.Status))
	case errors.As(err, &ue) && ue.Status == http.StatusTooManyRequests:
		ra := tokencache.RetryAfterSeconds(ue.RetryAfter)
		w.Header().Set("Retry-After", fmt.Sprint(max(ra, 1)))
		apierr.Write(w, http.StatusTooManyRequests, apierr.CodeUpstreamRateLimit, "fal is rate limiting token requests: retry after the Retry-After delay")
	default:
		w.Header().Set("Retry-After", "1")
		msg := "cannot mint a realtime token at fal: " + err.Error()
		if secret != "" {
			msg = strings.ReplaceAll(msg, secret, "***")
		}
		apierr.Write(w, http.StatusBadGateway, apierr.CodeUpstreamUnavail, msg)
	}
}
