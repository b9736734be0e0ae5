package falapi

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const testKey = "kid1:s3cr3t-value"

// newTLSServer serves h over TLS and returns a client pointed at it through
// overrides for both canonical hosts and trusting its certificate via CAFile.
func newTLSServer(t *testing.T, h http.HandlerFunc) (*Client, *[]string) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := &[]string{}
	c, err := New(Options{
		Overrides: map[string]string{RestBaseURL: srv.URL, APIBaseURL + "/": srv.URL + "/"},
		CAFile:    ca,
		Timeout:   5 * time.Second,
		OnCall: func(e, s string) {
			mu.Lock()
			defer mu.Unlock()
			*calls = append(*calls, e+"="+s)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, calls
}

func TestMintToken(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		body          string
		wantErr       bool
		wantRejection bool
		wantTransient bool
	}{
		{name: "token string", status: 200, body: `"eyJ.a.b"`},
		{name: "unauthorized", status: 401, body: `{"detail":"bad key kid1:s3cr3t-value"}`, wantErr: true, wantRejection: true},
		{name: "forbidden", status: 403, body: `{"detail":"no"}`, wantErr: true, wantRejection: true},
		{name: "rate limited", status: 429, body: `{}`, wantErr: true, wantTransient: true},
		{name: "server error", status: 503, body: `oops`, wantErr: true, wantTransient: true},
		{name: "not a token", status: 200, body: `{"token":1}`, wantErr: true, wantTransient: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got struct {
				Apps []string `json:"allowed_apps"`
				Exp  int      `json:"token_expiration"`
			}
			var auth, path string
			c, calls := newTLSServer(t, func(w http.ResponseWriter, r *http.Request) {
				auth, path = r.Header.Get("Authorization"), r.URL.Path
				_ = json.NewDecoder(r.Body).Decode(&got)
				w.Header().Set("Retry-After", "7")
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			})
			err := c.MintToken(context.Background(), testKey, []string{"fast-lcm-diffusion"}, 120*time.Second)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if auth != "Key "+testKey || path != "/tokens/" || got.Exp != 120 || len(got.Apps) != 1 || got.Apps[0] != "fast-lcm-diffusion" {
				t.Fatalf("request: auth ok=%v path=%q body=%+v", auth == "Key "+testKey, path, got)
			}
			if IsRejection(err) != tt.wantRejection || IsTransient(err) != tt.wantTransient {
				t.Fatalf("IsRejection=%v IsTransient=%v for %v", IsRejection(err), IsTransient(err), err)
			}
			if err != nil && (strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), testKey)) {
				t.Fatalf("error leaks the key: %v", err)
			}
			if tt.status == 429 && RetryAfter(err) != 7*time.Second {
				t.Fatalf("RetryAfter = %v, want 7s", RetryAfter(err))
			}
			if len(*calls) != 1 || (*calls)[0] != fmt.Sprintf("tokens=%d", tt.status) {
				t.Fatalf("OnCall saw %v", *calls)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	c, err := New(Options{Overrides: map[string]string{RestBaseURL: "https://127.0.0.1:1"}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = c.MintToken(context.Background(), testKey, []string{"a"}, 10*time.Second)
	var ue *UnreachableError
	if !errors.As(err, &ue) || !IsTransient(err) || IsRejection(err) {
		t.Fatalf("want a transient UnreachableError, got %v", err)
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("error leaks the key: %v", err)
	}
}

func TestUntrustedCertificateIsUnreachable(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `"t"`) }))
	defer srv.Close()
	c, err := New(Options{Overrides: map[string]string{RestBaseURL: srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.MintToken(context.Background(), testKey, []string{"a"}, 10*time.Second); !IsTransient(err) {
		t.Fatalf("want TLS failure without --fal-ca-file, got %v", err)
	}
}

func TestKeysLifecycle(t *testing.T) {
	var mu sync.Mutex
	keys := map[string]string{} // id -> alias
	order := []string{}
	c, calls := newTLSServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("Authorization") != "Key admin:adm" {
			w.WriteHeader(401)
			return
		}
		switch {
		case r.Method == "POST" && r.URL.Path == "/v1/keys":
			var in struct{ Alias string }
			_ = json.NewDecoder(r.Body).Decode(&in)
			id := fmt.Sprintf("k%d", len(order))
			keys[id] = in.Alias
			order = append(order, id)
			fmt.Fprintf(w, `{"key_id":%q,"key_secret":"sec","key":"%s:sec"}`, id, id)
		case r.Method == "GET" && r.URL.Path == "/v1/keys":
			// one key per page, to exercise cursor paging
			start := 0
			if cur := r.URL.Query().Get("cursor"); cur != "" {
				fmt.Sscanf(cur, "c%d", &start)
			}
			var live []string
			for _, id := range order {
				if _, ok := keys[id]; ok {
					live = append(live, id)
				}
			}
			if start >= len(live) {
				fmt.Fprint(w, `{"keys":[],"next_cursor":null,"has_more":false}`)
				return
			}
			id := live[start]
			more := start+1 < len(live)
			fmt.Fprintf(w, `{"keys":[{"key_id":%q,"alias":%q,"scope":"API"}],"next_cursor":"c%d","has_more":%v}`, id, keys[id], start+1, more)
		case r.Method == "DELETE" && strings.HasPrefix(r.URL.Path, "/v1/keys/"):
			delete(keys, strings.TrimPrefix(r.URL.Path, "/v1/keys/"))
			w.WriteHeader(204)
		default:
			w.WriteHeader(404)
		}
	})
	ctx := context.Background()
	for _, alias := range []string{"a1", "a2", "a3"} {
		k, err := c.CreateKey(ctx, "admin:adm", alias)
		if err != nil {
			t.Fatal(err)
		}
		if k.Key != k.KeyID+":sec" || strings.Contains(k.String(), "sec") {
			t.Fatalf("created key %v", k)
		}
	}
	list, err := c.ListKeys(ctx, "admin:adm")
	if err != nil || len(list) != 3 || list[2].Alias != "a3" {
		t.Fatalf("ListKeys = %+v, %v", list, err)
	}
	for i := 0; i < 2; i++ { // idempotent
		if err := c.DeleteKey(ctx, "admin:adm", "k1"); err != nil {
			t.Fatal(err)
		}
	}
	list, _ = c.ListKeys(ctx, "admin:adm")
	if len(list) != 2 {
		t.Fatalf("after delete: %+v", list)
	}
	if _, err := c.CreateKey(ctx, "wrong:key", "x"); !IsRejection(err) {
		t.Fatalf("wrong admin key: %v", err)
	}
	if err := c.DeleteKey(ctx, "admin:adm", "../x"); err == nil {
		t.Fatal("malformed key id accepted")
	}
	if len(*calls) < 8 {
		t.Fatalf("OnCall saw only %v", *calls)
	}
}

func TestNewRejectsBadOverrides(t *testing.T) {
	for _, ov := range []map[string]string{
		{"api.fal.ai": "https://127.0.0.1:1"},
		{"https://api.fal.ai": "127.0.0.1:1"},
		{"https://api.fal.ai": "https://127.0.0.1:1/path"},
	} {
		if _, err := New(Options{Overrides: ov}); err == nil {
			t.Errorf("override %v accepted", ov)
		}
	}
	if _, err := New(Options{CAFile: "/nonexistent/ca.pem"}); err == nil {
		t.Error("missing CA file accepted")
	}
}

func TestParseOverrides(t *testing.T) {
	m, err := ParseOverrides([]string{"https://api.fal.ai/=https://127.0.0.1:9/", "https://rest.fal.ai=http://127.0.0.1:8"})
	if err != nil || m["https://api.fal.ai"] != "https://127.0.0.1:9" || m["https://rest.fal.ai"] != "http://127.0.0.1:8" {
		t.Fatalf("%v %v", m, err)
	}
	if _, err := ParseOverrides([]string{"nope"}); err == nil {
		t.Fatal("accepted an override without '='")
	}
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		raw, id string
		ok      bool
	}{
		{"abc:def", "abc", true},
		{"  abc:def\n", "abc", true},
		{"", "", false},
		{"abcdef", "", false},
		{":def", "", false},
		{"abc:", "", false},
		{"ab c:def", "", false},
		{"abc:de:f", "", false},
	}
	for _, tt := range tests {
		id, _, err := ParseKey(tt.raw)
		if (err == nil) != tt.ok || id != tt.id {
			t.Errorf("ParseKey(%q) = %q, %v", tt.raw, id, err)
		}
		if err != nil && tt.raw != "" && strings.Contains(err.Error(), strings.TrimSpace(tt.raw)) {
			t.Errorf("error repeats the key: %v", err)
		}
	}
}
