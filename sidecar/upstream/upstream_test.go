package upstream

import (
	"strings"
	"testing"
)

func TestResolver(t *testing.T) {
	r, err := NewResolver([]string{"https://fal.run=https://127.0.0.1:9443", "https://rest.fal.ai/=http://127.0.0.1:9000/prefix/"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ got, want string }{
		{r.URL("fal.run", "/fal-ai/flux/dev", "a=1"), "https://127.0.0.1:9443/fal-ai/flux/dev?a=1"},
		{r.URL("rest.fal.ai", "/tokens/", ""), "http://127.0.0.1:9000/prefix/tokens/"},
		{r.URL("queue.fal.run", "/x/y", ""), "https://queue.fal.run/x/y"},
		{r.WSURL("fal.run", "/a/b/realtime", "fal_jwt_token=t"), "wss://127.0.0.1:9443/a/b/realtime?fal_jwt_token=t"},
		{r.WSURL("rest.fal.ai", "/x", ""), "ws://127.0.0.1:9000/prefix/x"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
}

func TestResolverRejects(t *testing.T) {
	for _, o := range []string{
		"fal.run",                                // no '='
		"https://evil.com=https://127.0.0.1:1",   // not a fal host
		"http://fal.run=https://127.0.0.1:1",     // canonical side must be https
		"https://fal.run=ftp://127.0.0.1",        // bad scheme
		"https://fal.run=https://127.0.0.1:1?x=", // query
		"https://fal.run=https://u:p@127.0.0.1",  // userinfo
	} {
		if _, err := NewResolver([]string{o}); err == nil || !strings.Contains(err.Error(), "--upstream-override") {
			t.Errorf("%q: %v", o, err)
		}
	}
}

func TestTLSConfigErrors(t *testing.T) {
	if _, err := TLSConfig("/does/not/exist.pem"); err == nil || !strings.Contains(err.Error(), "--upstream-ca-file") {
		t.Errorf("missing file: %v", err)
	}
	if cfg, err := TLSConfig(""); err != nil || cfg.RootCAs != nil {
		t.Errorf("no CA file: %v", err)
	}
}
