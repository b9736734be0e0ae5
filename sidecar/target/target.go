// Package target validates the x-fal-target-url header of proxy requests. It
// is deliberately strict: the header is compared byte for byte against the
// canonical fal hosts rather than normalised, so encoded, mixed-case or
// look-alike hosts never reach the allowlist logic.
package target

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/falguard/falguard/sidecar/apierr"
	"github.com/falguard/falguard/sidecar/policy"
)

// Header carries the real fal URL on proxy requests (fal-js, fal-swift).
const Header = "X-Fal-Target-Url"

// MaxLen is the longest target accepted.
const MaxLen = 8 << 10

// Kind says what a validated target is, so the proxy can route it.
type Kind int

const (
	KindRun     Kind = iota // fal.run: sync run, /stream
	KindQueue               // queue.fal.run
	KindToken               // rest.fal.ai/tokens/: answered from the token cache
	KindStorage             // rest.fal.ai storage setup
	KindAPI                 // api.fal.ai (not the keys API)
)

// Canonical hosts the proxy forwards to.
const (
	HostRun       = "fal.run"
	HostQueue     = "queue.fal.run"
	HostRest      = "rest.fal.ai"
	HostRestAlpha = "rest.alpha.fal.ai"
	HostAPI       = "api.fal.ai"
)

// Hosts lists every canonical host (also the valid --upstream-override keys).
var Hosts = []string{HostRun, HostQueue, HostRest, HostRestAlpha, HostAPI}

var storagePaths = map[string]bool{
	"/storage/upload/initiate":           true,
	"/storage/upload/initiate-multipart": true,
	"/storage/upload/complete-multipart": true,
	"/storage/auth/token":                true,
}

// Target is a validated proxy target.
type Target struct {
	Host     string // canonical host, e.g. "fal.run"
	Path     string // as sent, starting with "/"
	RawQuery string // as sent, without "?"
	Kind     Kind
	// App is the allowlist pattern that let a fal.run / queue.fal.run target
	// through; empty for other hosts. Safe as a metric label.
	App string
}

// URL is the canonical https URL of the target.
func (t *Target) URL() string {
	u := "https://" + t.Host + t.Path
	if t.RawQuery != "" {
		u += "?" + t.RawQuery
	}
	return u
}

// Rejection is a refused target: always answered with Status and a JSON
// {message, code}.
type Rejection struct {
	Status  int
	Code    string
	Message string
}

func (r *Rejection) Error() string { return r.Message }

func invalid(format string, a ...any) *Rejection {
	return &Rejection{Status: http.StatusBadRequest, Code: apierr.CodeTargetInvalid, Message: "x-fal-target-url " + fmt.Sprintf(format, a...)}
}

func notAllowed(code, format string, a ...any) *Rejection {
	return &Rejection{Status: http.StatusBadRequest, Code: code, Message: "x-fal-target-url " + fmt.Sprintf(format, a...)}
}

// Validate checks every value of the x-fal-target-url header against the
// rules in DESIGN.md and the policy's app allowlist.
func Validate(values []string, pol *policy.Policy) (*Target, *Rejection) {
	if len(values) == 0 || values[0] == "" {
		return nil, &Rejection{Status: http.StatusBadRequest, Code: apierr.CodeTargetMissing,
			Message: "missing x-fal-target-url header: send the fal URL to call in it (fal clients do this when proxyUrl is set)"}
	}
	v := values[0]
	for _, o := range values[1:] {
		if o != v {
			return nil, invalid("is repeated with different values: send it once")
		}
	}
	if len(v) > MaxLen {
		return nil, invalid("is longer than %d bytes", MaxLen)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f {
			return nil, invalid("holds whitespace, a control or a non-ASCII character at byte %d: percent-encode it", i)
		}
	}
	if strings.HasPrefix(strings.ToLower(v), "http://") {
		return nil, notAllowed(apierr.CodeTargetNotAllowed, "must use https://, not http://")
	}
	rest, ok := strings.CutPrefix(v, "https://")
	if !ok {
		return nil, invalid("is not an absolute URL starting with https:// (lowercase)")
	}
	if strings.Contains(rest, "#") {
		return nil, invalid("must not have a #fragment")
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	authority, pathQuery := rest[:end], rest[end:]
	switch {
	case authority == "":
		return nil, invalid("has no host")
	case strings.Contains(authority, "@"):
		return nil, notAllowed(apierr.CodeTargetNotAllowed, "must not carry userinfo (user@host)")
	case strings.HasPrefix(authority, "[") || isIPv4(authority):
		return nil, notAllowed(apierr.CodeTargetNotAllowed, "must name a fal host, not an IP address")
	case strings.Contains(authority, ":"):
		return nil, notAllowed(apierr.CodeTargetNotAllowed, "must use the default https port (no :port)")
	}
	host := ""
	for _, h := range Hosts {
		if authority == h {
			host = h
		}
	}
	if host == "" {
		return nil, notAllowed(apierr.CodeTargetNotAllowed,
			"host %q is not allowed: use one of %s (exact, lowercase)", authority, strings.Join(Hosts, ", "))
	}
	p, q, _ := strings.Cut(pathQuery, "?")
	if p == "" {
		p = "/"
	}
	if strings.ContainsAny(p, "%\\") {
		return nil, invalid("path must not contain percent-encoding or backslashes")
	}
	segs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if len(segs) > 1 && segs[len(segs)-1] == "" {
		segs = segs[:len(segs)-1] // one trailing slash is fine (/tokens/)
	}
	for i, s := range segs {
		if s == "." || s == ".." || (s == "" && (i != 0 || len(segs) != 1)) {
			return nil, invalid("path %q has empty or relative segments", p)
		}
	}
	t := &Target{Host: host, Path: p, RawQuery: q}
	switch host {
	case HostRun, HostQueue:
		t.Kind = KindRun
		if host == HostQueue {
			t.Kind = KindQueue
		}
		app, ok := matchApp(segs, host == HostQueue, pol)
		if !ok {
			return nil, &Rejection{Status: http.StatusBadRequest, Code: apierr.CodeAppNotAllowed,
				Message: fmt.Sprintf("app %q is not in this credential's allowedApps: add it to the FalCredential", strings.Trim(p, "/"))}
		}
		t.App = app
	case HostRest, HostRestAlpha:
		switch {
		case p == "/tokens/":
			t.Kind = KindToken
		case storagePaths[p]:
			t.Kind = KindStorage
		default:
			return nil, notAllowed(apierr.CodeTargetNotAllowed,
				"path %q on %s is not allowed: only /tokens/ and the storage upload endpoints are", p, host)
		}
	case HostAPI:
		if strings.HasPrefix(strings.ToLower(p), "/v1/keys") {
			return nil, notAllowed(apierr.CodeTargetNotAllowed, "the keys API (/v1/keys) is not reachable through the sidecar")
		}
		t.Kind = KindAPI
	}
	return t, nil
}

// AppID splits an endpoint path into owner and alias, honouring fal's
// namespaces (workflows/, comfy/) and legacy numeric ids ("123-lcm").
func AppID(segs []string) (ns, owner, alias string, rest []string, ok bool) {
	if len(segs) == 1 {
		if o, a, found := strings.Cut(segs[0], "-"); found && isDigits(o) && a != "" {
			return "", o, a, nil, true
		}
		return "", "", "", nil, false
	}
	if len(segs) >= 3 && (segs[0] == "workflows" || segs[0] == "comfy") {
		return segs[0], segs[1], segs[2], segs[3:], true
	}
	if len(segs) >= 2 && segs[0] != "" && segs[1] != "" {
		return "", segs[0], segs[1], segs[2:], true
	}
	return "", "", "", nil, false
}

// matchApp finds the allowlist pattern for a fal.run / queue.fal.run path.
// Queue request paths (…/requests/<id>/…) drop the endpoint's sub-path, so
// they are checked at the app level, as fal scopes request ids to the app.
func matchApp(segs []string, queue bool, pol *policy.Policy) (string, bool) {
	ns, owner, alias, rest, ok := AppID(segs)
	if !ok {
		return "", false
	}
	if queue && len(rest) >= 2 && rest[0] == "requests" {
		if ns != "" {
			return pol.MatchEndpoint(ns + "/" + owner + "/" + alias)
		}
		return pol.MatchApp(owner, alias)
	}
	return pol.MatchEndpoint(strings.Join(segs, "/"))
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func isIPv4(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return true
}

// ValidSegments reports whether every path segment is a plain fal id
// segment: letters, digits, '-', '_', '.', and not "." or "..".
func ValidSegments(segs []string) bool {
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return false
		}
		for i := 0; i < len(s); i++ {
			c := s[i]
			letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
			if !letter && c != '-' && c != '_' && c != '.' {
				return false
			}
		}
	}
	return true
}
