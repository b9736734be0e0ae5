// Package policy is the policy.json schema the controller writes into the
// managed Secret and the sidecar reads. Plain Go, so both sides share it
// without the sidecar importing anything from Kubernetes.
package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
)

// Version is the schema version this package writes and understands.
const Version = 1

// Defaults applied to fields a policy leaves out.
const (
	DefaultTokenTTLSeconds = 120
	DefaultMaxRequestBytes = 32 << 20
	MinTokenTTLSeconds     = 10
	MaxTokenTTLSeconds     = 3600
)

// File names inside a credentials directory.
const (
	KeyFile    = "key"
	PolicyFile = "policy.json"
)

// Policy is what one FalCredential allows its sidecars to do.
type Policy struct {
	Version         int       `json:"version"`
	Credential      string    `json:"credential,omitempty"` // "namespace/name"
	KeyID           string    `json:"keyID,omitempty"`      // public half only
	AllowedApps     []string  `json:"allowedApps"`
	TokenTTLSeconds int       `json:"tokenTTLSeconds,omitempty"`
	MaxRequestBytes int64     `json:"maxRequestBytes,omitempty"`
	RateLimit       RateLimit `json:"rateLimit,omitempty"`
	CORS            CORS      `json:"cors,omitempty"`
}

// RateLimit is a token bucket on requests sent to fal; zero means off.
type RateLimit struct {
	RequestsPerSecond float64 `json:"requestsPerSecond,omitempty"`
	Burst             int     `json:"burst,omitempty"`
}

// CORS lists browser origins allowed to call the proxy.
type CORS struct {
	AllowedOrigins []string `json:"allowedOrigins,omitempty"`
}

// Parse decodes policy.json, ignoring unknown fields, applies defaults and
// validates the result.
func Parse(data []byte) (*Policy, error) {
	var p Policy
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("policy.json is not valid JSON: %w", err)
	}
	p.Default()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Marshal renders the policy as the controller writes it (stable field order).
func (p *Policy) Marshal() ([]byte, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encoding policy: %w", err)
	}
	return b, nil
}

// Default fills in optional fields left at zero.
func (p *Policy) Default() {
	if p.Version == 0 {
		p.Version = Version
	}
	if p.TokenTTLSeconds == 0 {
		p.TokenTTLSeconds = DefaultTokenTTLSeconds
	}
	if p.MaxRequestBytes == 0 {
		p.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if p.RateLimit.RequestsPerSecond > 0 && p.RateLimit.Burst == 0 {
		p.RateLimit.Burst = int(2 * p.RateLimit.RequestsPerSecond)
		if p.RateLimit.Burst < 1 {
			p.RateLimit.Burst = 1
		}
	}
}

// Validate reports every problem at once, each naming the field and the fix.
func (p *Policy) Validate() error {
	var errs []error
	if p.Version != Version {
		errs = append(errs, fmt.Errorf("version %d is not supported (want %d): upgrade the sidecar", p.Version, Version))
	}
	if len(p.AllowedApps) == 0 {
		errs = append(errs, errors.New("allowedApps is empty: list at least one owner/alias glob"))
	}
	for _, a := range p.AllowedApps {
		if err := ValidateAppPattern(a); err != nil {
			errs = append(errs, err)
		}
	}
	if p.TokenTTLSeconds < MinTokenTTLSeconds || p.TokenTTLSeconds > MaxTokenTTLSeconds {
		errs = append(errs, fmt.Errorf("tokenTTLSeconds %d is out of range: use %d to %d", p.TokenTTLSeconds, MinTokenTTLSeconds, MaxTokenTTLSeconds))
	}
	if p.MaxRequestBytes < 0 {
		errs = append(errs, fmt.Errorf("maxRequestBytes %d is negative", p.MaxRequestBytes))
	}
	if p.RateLimit.RequestsPerSecond < 0 || p.RateLimit.Burst < 0 {
		errs = append(errs, errors.New("rateLimit values must not be negative"))
	}
	for _, o := range p.CORS.AllowedOrigins {
		if !strings.HasPrefix(o, "https://") && !strings.HasPrefix(o, "http://") || strings.Count(o, "/") != 2 {
			errs = append(errs, fmt.Errorf("cors.allowedOrigins entry %q is not an origin: use scheme://host[:port]", o))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid policy: %w", errors.Join(errs...))
	}
	return nil
}

// ValidateAppPattern checks one allowedApps glob: owner/alias[/path...], with
// '*' and '?' as wildcards within a segment.
func ValidateAppPattern(pattern string) error {
	segs := strings.Split(pattern, "/")
	if len(segs) < 2 {
		return fmt.Errorf("allowedApps entry %q must look like owner/alias (e.g. fal-ai/flux/*)", pattern)
	}
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return fmt.Errorf("allowedApps entry %q has an empty or relative path segment", pattern)
		}
	}
	if _, err := path.Match(pattern, ""); err != nil {
		return fmt.Errorf("allowedApps entry %q is not a valid glob: %w", pattern, err)
	}
	if strings.ContainsAny(pattern, "[]\\ ") {
		return fmt.Errorf("allowedApps entry %q may use only '*' and '?' as wildcards", pattern)
	}
	return nil
}

// AllowsEndpoint reports whether an endpoint "owner/alias[/path...]" (as it
// appears in a fal.run URL path, without the leading slash) is allowed. A
// pattern allows the endpoint it matches and everything beneath it, so
// "fal-ai/flux/*" allows "fal-ai/flux/dev" and "fal-ai/flux/dev/image-to-image".
func (p *Policy) AllowsEndpoint(endpoint string) bool {
	segs := strings.Split(strings.Trim(endpoint, "/"), "/")
	if len(segs) < 2 {
		return false
	}
	for _, pat := range p.AllowedApps {
		n := strings.Count(pat, "/") + 1
		if n > len(segs) {
			continue
		}
		if ok, _ := path.Match(pat, strings.Join(segs[:n], "/")); ok {
			return true
		}
	}
	return false
}

// AllowsApp reports whether any endpoint of the app "owner/alias" is allowed.
// fal scopes realtime tokens and queue request ids to the app, not to a path
// below it, so those are checked at this level.
func (p *Policy) AllowsApp(owner, alias string) bool {
	for _, pat := range p.AllowedApps {
		segs := strings.SplitN(pat, "/", 3)
		okOwner, _ := path.Match(segs[0], owner)
		okAlias, _ := path.Match(segs[1], alias)
		if okOwner && okAlias {
			return true
		}
	}
	return false
}
