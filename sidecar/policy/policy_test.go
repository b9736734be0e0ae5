package policy

import (
	"strings"
	"testing"
)

func TestParseDefaultsAndUnknownFields(t *testing.T) {
	p, err := Parse([]byte(`{"version":1,"allowedApps":["fal-ai/flux/*"],"future":true,"rateLimit":{"requestsPerSecond":5}}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.TokenTTLSeconds != DefaultTokenTTLSeconds || p.MaxRequestBytes != DefaultMaxRequestBytes || p.RateLimit.Burst != 10 {
		t.Fatalf("defaults not applied: %+v", p)
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"not json", `{`, "not valid JSON"},
		{"no apps", `{"version":1,"allowedApps":[]}`, "allowedApps is empty"},
		{"no owner", `{"version":1,"allowedApps":["flux"]}`, "owner/alias"},
		{"empty segment", `{"version":1,"allowedApps":["fal-ai//x"]}`, "empty or relative"},
		{"class glob", `{"version":1,"allowedApps":["fal-ai/[ab]"]}`, "only '*' and '?'"},
		{"ttl", `{"version":1,"allowedApps":["a/b"],"tokenTTLSeconds":5}`, "tokenTTLSeconds 5"},
		{"version", `{"version":2,"allowedApps":["a/b"]}`, "version 2"},
		{"origin", `{"version":1,"allowedApps":["a/b"],"cors":{"allowedOrigins":["https://x.com/path"]}}`, "not an origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestAllows(t *testing.T) {
	p := &Policy{AllowedApps: []string{"fal-ai/fast-lcm-diffusion", "fal-ai/flux/*"}}
	for _, tc := range []struct {
		endpoint string
		want     bool
	}{
		{"fal-ai/fast-lcm-diffusion", true},
		{"fal-ai/fast-lcm-diffusion/realtime", true},
		{"fal-ai/flux/dev", true},
		{"fal-ai/flux/dev/image-to-image", true},
		{"fal-ai/flux", false},
		{"fal-ai/flux-pro", false},
		{"fal-ai/fast-lcm-diffusion-x", false},
		{"evil/fast-lcm-diffusion", false},
		{"fal-ai", false},
		{"", false},
	} {
		if got := p.AllowsEndpoint(tc.endpoint); got != tc.want {
			t.Errorf("AllowsEndpoint(%q) = %v, want %v", tc.endpoint, got, tc.want)
		}
	}
	if !p.AllowsApp("fal-ai", "flux") || !p.AllowsApp("fal-ai", "fast-lcm-diffusion") || p.AllowsApp("fal-ai", "sdxl") {
		t.Error("AllowsApp wrong")
	}
}
