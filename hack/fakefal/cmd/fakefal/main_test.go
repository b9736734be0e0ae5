package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/falguard/falguard/hack/fakefal"
)

func TestRunWritesStateAndServes(t *testing.T) {
	stateFile := filepath.Join(t.TempDir(), "state.json")
	stop := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- run([]string{"--key", "kid:sec", "--admin-key", "adm:sec", "--state-file", stateFile}, stop)
	}()

	var st fakefal.State
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(stateFile)
		if err == nil && json.Unmarshal(b, &st) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state file not written within 10s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(st.URLs) != len(fakefal.Hosts) || len(st.Overrides) != len(fakefal.Hosts) || !strings.HasPrefix(st.Control, "http://127.0.0.1:") {
		t.Fatalf("state %+v: want a URL and override per host and a loopback control URL", st)
	}
	ca, err := os.ReadFile(st.CAFile)
	if err != nil {
		t.Fatalf("caFile: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	tests := []struct {
		name, method, url, key string
		want                   int
	}{
		{"api key runs", "POST", st.URLs["fal.run"] + "/fal-ai/flux", "kid:sec", 200},
		{"admin key lists keys", "GET", st.URLs["api.fal.ai"] + "/v1/keys", "adm:sec", 200},
		{"api key cannot list keys", "GET", st.URLs["api.fal.ai"] + "/v1/keys", "kid:sec", 403},
		{"control state", "GET", st.Control + "/state", "", 200},
		{"control calls", "GET", st.Control + "/calls", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, tt.url, strings.NewReader("{}"))
			if tt.key != "" {
				req.Header.Set("Authorization", "Key "+tt.key)
			}
			res, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tt.want {
				t.Errorf("%s %s: %d, want %d", tt.method, tt.url, res.StatusCode, tt.want)
			}
		})
	}

	stop <- os.Interrupt
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of the stop signal")
	}
	if _, err := os.Stat(stateFile); !os.IsNotExist(err) {
		t.Errorf("state file left behind: %v", err)
	}
	if _, err := os.Stat(st.CAFile); !os.IsNotExist(err) {
		t.Errorf("CA file left behind: %v", err)
	}
}

func TestRunRejectsNonLoopbackControl(t *testing.T) {
	err := run([]string{"--control-listen", "0.0.0.0:0"}, make(chan os.Signal))
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("run = %v, want a loopback error", err)
	}
}
