package policy

import (
	"path"
	"strings"
)

// The Match* functions are the Allows* checks that also return the allowlist
// pattern that matched, so callers can label metrics by pattern: a bounded set
// chosen by the operator, never by request input.

// MatchEndpoint is AllowsEndpoint returning the first matching pattern.
func (p *Policy) MatchEndpoint(endpoint string) (string, bool) {
	segs := strings.Split(strings.Trim(endpoint, "/"), "/")
	if len(segs) < 2 {
		return "", false
	}
	for _, pat := range p.AllowedApps {
		n := strings.Count(pat, "/") + 1
		if n > len(segs) {
			continue
		}
		if ok, _ := path.Match(pat, strings.Join(segs[:n], "/")); ok {
			return pat, true
		}
	}
	return "", false
}

// MatchApp is AllowsApp returning the first matching pattern.
func (p *Policy) MatchApp(owner, alias string) (string, bool) {
	for _, pat := range p.AllowedApps {
		segs := strings.SplitN(pat, "/", 3)
		okOwner, _ := path.Match(segs[0], owner)
		okAlias, _ := path.Match(segs[1], alias)
		if okOwner && okAlias {
			return pat, true
		}
	}
	return "", false
}

// MatchAlias reports whether some pattern's alias segment matches alias. fal's
// token request names only the alias (allowed_apps: [alias]), not the owner,
// so this is the check a token request made through the proxy can get.
func (p *Policy) MatchAlias(alias string) (string, bool) {
	if alias == "" || strings.ContainsAny(alias, "/*?") {
		return "", false
	}
	for _, pat := range p.AllowedApps {
		segs := strings.SplitN(pat, "/", 3)
		if ok, _ := path.Match(segs[1], alias); ok {
			return pat, true
		}
	}
	return "", false
}
