package target

import (
	"net/http"
	"strings"
	"testing"

	"github.com/falguard/falguard/sidecar/apierr"
	"github.com/falguard/falguard/sidecar/policy"
)

var pol = &policy.Policy{AllowedApps: []string{"fal-ai/fast-lcm-diffusion", "fal-ai/flux/*", "workflows/me/wf"}}

func TestValidateAccepts(t *testing.T) {
	for _, tc := range []struct {
		url  string
		kind Kind
		app  string
	}{
		{"https://fal.run/fal-ai/flux/dev", KindRun, "fal-ai/flux/*"},
		{"https://fal.run/fal-ai/flux/dev/stream", KindRun, "fal-ai/flux/*"},
		{"https://fal.run/fal-ai/fast-lcm-diffusion/image-to-image?x=1&y=%20z", KindRun, "fal-ai/fast-lcm-diffusion"},
		{"https://queue.fal.run/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fexample.com%2Fhook", KindQueue, "fal-ai/flux/*"},
		{"https://queue.fal.run/fal-ai/flux/requests/abc-123/status?logs=1", KindQueue, "fal-ai/flux/*"},
		{"https://queue.fal.run/fal-ai/fast-lcm-diffusion/requests/abc/cancel", KindQueue, "fal-ai/fast-lcm-diffusion"},
		{"https://queue.fal.run/workflows/me/wf/requests/abc/status/stream", KindQueue, "workflows/me/wf"},
		{"https://rest.fal.ai/tokens/", KindToken, ""},
		{"https://rest.alpha.fal.ai/tokens/", KindToken, ""},
		{"https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3", KindStorage, ""},
		{"https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3", KindStorage, ""},
		{"https://rest.fal.ai/storage/upload/complete-multipart?storage_type=fal-cdn-v3", KindStorage, ""},
		{"https://rest.alpha.fal.ai/storage/upload/initiate", KindStorage, ""},
		{"https://rest.fal.ai/storage/auth/token?storage_type=fal-cdn-v3", KindStorage, ""},
		{"https://api.fal.ai/v1/models", KindAPI, ""},
	} {
		t.Run(tc.url, func(t *testing.T) {
			got, rej := Validate([]string{tc.url}, pol)
			if rej != nil {
				t.Fatalf("refused: %s (%s)", rej.Message, rej.Code)
			}
			if got.Kind != tc.kind || got.App != tc.app || got.URL() != tc.url {
				t.Fatalf("got kind %v app %q url %q", got.Kind, got.App, got.URL())
			}
		})
	}
}

func TestValidateRefuses(t *testing.T) {
	long := "https://fal.run/fal-ai/flux/dev?q=" + strings.Repeat("a", MaxLen)
	for _, tc := range []struct {
		name   string
		values []string
		code   string
	}{
		{"missing", nil, apierr.CodeTargetMissing},
		{"empty", []string{""}, apierr.CodeTargetMissing},
		{"repeated different", []string{"https://fal.run/fal-ai/flux/dev", "https://evil.com/"}, apierr.CodeTargetInvalid},
		{"too long", []string{long}, apierr.CodeTargetInvalid},
		{"not a url", []string{"not a url"}, apierr.CodeTargetInvalid},
		{"relative", []string{"/fal-ai/flux/dev"}, apierr.CodeTargetInvalid},
		{"no scheme", []string{"fal.run/fal-ai/flux/dev"}, apierr.CodeTargetInvalid},
		{"scheme relative", []string{"//fal.run/fal-ai/flux/dev"}, apierr.CodeTargetInvalid},
		{"single slash", []string{"https:/fal.run/fal-ai/flux/dev"}, apierr.CodeTargetInvalid},
		{"http", []string{"http://fal.run/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"HTTP upper", []string{"HTTP://fal.run/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"HTTPS upper", []string{"HTTPS://fal.run/fal-ai/flux/dev"}, apierr.CodeTargetInvalid},
		{"wss", []string{"wss://fal.run/fal-ai/flux/dev"}, apierr.CodeTargetInvalid},
		{"other host", []string{"https://example.com/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"suffix look-alike", []string{"https://fal.run.evil.com/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"prefix look-alike", []string{"https://evilfal.run/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"subdomain", []string{"https://evil.fal.run/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"userinfo look-alike", []string{"https://fal.run@evil.com/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"userinfo", []string{"https://user:pass@fal.run/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"fragment look-alike", []string{"https://evil.com#fal.run"}, apierr.CodeTargetInvalid},
		{"path look-alike", []string{"https://evil.com/fal.run"}, apierr.CodeTargetNotAllowed},
		{"fragment on fal", []string{"https://fal.run/fal-ai/flux/dev#x"}, apierr.CodeTargetInvalid},
		{"ipv4", []string{"https://127.0.0.1/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"ipv6", []string{"https://[::1]/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"ip decimal", []string{"https://2130706433/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"port 8443", []string{"https://fal.run:8443/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"explicit 443", []string{"https://fal.run:443/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"mixed-case host", []string{"https://FAL.run/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"upper host", []string{"https://QUEUE.FAL.RUN/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"encoded dot host", []string{"https://fal%2erun/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"encoded letter host", []string{"https://%66al.run/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"encoded at", []string{"https://fal.run%40evil.com/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"trailing dot host", []string{"https://fal.run./fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"unicode host", []string{"https://f\u0430l.run/fal-ai/flux/dev"}, apierr.CodeTargetInvalid},
		{"tab", []string{"https://fal.run/fal-ai/flux/dev\t"}, apierr.CodeTargetInvalid},
		{"space", []string{"https://fal.run/fal-ai/flux dev"}, apierr.CodeTargetInvalid},
		{"newline", []string{"https://fal.run/fal-ai/flux/dev\nx"}, apierr.CodeTargetInvalid},
		{"nul", []string{"https://fal.run/fal-ai/flux/dev\x00"}, apierr.CodeTargetInvalid},
		{"backslash", []string{"https://fal.run\\@evil.com/fal-ai/flux/dev"}, apierr.CodeTargetNotAllowed},
		{"dot-dot", []string{"https://fal.run/fal-ai/flux/../../evil/app"}, apierr.CodeTargetInvalid},
		{"encoded dot-dot", []string{"https://fal.run/fal-ai/flux/%2e%2e/%2e%2e/evil/app"}, apierr.CodeTargetInvalid},
		{"encoded slash", []string{"https://fal.run/fal-ai%2fflux/dev"}, apierr.CodeTargetInvalid},
		{"double slash", []string{"https://fal.run//fal-ai/flux/dev"}, apierr.CodeTargetInvalid},
		{"app not allowed", []string{"https://fal.run/evil/app"}, apierr.CodeAppNotAllowed},
		{"app prefix trick", []string{"https://fal.run/fal-ai/flux-pro/v1"}, apierr.CodeAppNotAllowed},
		{"app case trick", []string{"https://fal.run/fal-ai/FLUX/dev"}, apierr.CodeAppNotAllowed},
		{"queue app not allowed", []string{"https://queue.fal.run/evil/app/requests/1/status"}, apierr.CodeAppNotAllowed},
		{"no app", []string{"https://fal.run/"}, apierr.CodeAppNotAllowed},
		{"keys api", []string{"https://api.fal.ai/v1/keys"}, apierr.CodeTargetNotAllowed},
		{"keys api item", []string{"https://api.fal.ai/v1/keys/abc"}, apierr.CodeTargetNotAllowed},
		{"keys api query", []string{"https://api.fal.ai/v1/keys?limit=10"}, apierr.CodeTargetNotAllowed},
		{"keys api case", []string{"https://api.fal.ai/V1/Keys"}, apierr.CodeTargetNotAllowed},
		{"rest other path", []string{"https://rest.fal.ai/billing"}, apierr.CodeTargetNotAllowed},
		{"rest tokens no slash", []string{"https://rest.fal.ai/tokens"}, apierr.CodeTargetNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, rej := Validate(tc.values, pol)
			if rej == nil {
				t.Fatalf("accepted %+v", got)
			}
			if rej.Status != http.StatusBadRequest || rej.Code != tc.code || rej.Message == "" {
				t.Fatalf("got %d %s %q, want 400 %s", rej.Status, rej.Code, rej.Message, tc.code)
			}
		})
	}
}

func TestAppID(t *testing.T) {
	for _, tc := range []struct {
		in                     string
		ns, owner, alias, rest string
		ok                     bool
	}{
		{"fal-ai/fast-lcm-diffusion/image-to-image", "", "fal-ai", "fast-lcm-diffusion", "image-to-image", true},
		{"110602490-lcm", "", "110602490", "lcm", "", true},
		{"comfy/me/flow/x", "comfy", "me", "flow", "x", true},
		{"lcm", "", "", "", "", false},
		{"abc-lcm", "", "", "", "", false},
	} {
		ns, o, a, r, ok := AppID(strings.Split(tc.in, "/"))
		if ns != tc.ns || o != tc.owner || a != tc.alias || strings.Join(r, "/") != tc.rest || ok != tc.ok {
			t.Errorf("AppID(%q) = %q %q %q %q %v", tc.in, ns, o, a, r, ok)
		}
	}
}
