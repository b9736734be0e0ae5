package policy

import "testing"

func TestMatchReturnsPattern(t *testing.T) {
	p := &Policy{AllowedApps: []string{"fal-ai/fast-lcm-diffusion", "fal-ai/flux/*"}}
	for _, tc := range []struct {
		name   string
		match  func() (string, bool)
		want   string
		wantOK bool
	}{
		{"endpoint below glob", func() (string, bool) { return p.MatchEndpoint("fal-ai/flux/dev/image-to-image") }, "fal-ai/flux/*", true},
		{"endpoint too short", func() (string, bool) { return p.MatchEndpoint("fal-ai/flux") }, "", false},
		{"app", func() (string, bool) { return p.MatchApp("fal-ai", "fast-lcm-diffusion") }, "fal-ai/fast-lcm-diffusion", true},
		{"app other owner", func() (string, bool) { return p.MatchApp("evil", "fast-lcm-diffusion") }, "", false},
		{"alias", func() (string, bool) { return p.MatchAlias("flux") }, "fal-ai/flux/*", true},
		{"alias unknown", func() (string, bool) { return p.MatchAlias("sdxl") }, "", false},
		{"alias wildcard input", func() (string, bool) { return p.MatchAlias("*") }, "", false},
		{"alias empty", func() (string, bool) { return p.MatchAlias("") }, "", false},
	} {
		got, ok := tc.match()
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("%s: got (%q,%v), want (%q,%v)", tc.name, got, ok, tc.want, tc.wantOK)
		}
	}
}
