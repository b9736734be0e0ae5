package config

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	p, err := Parse(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := p.Run
	if p.Command != CmdRun || c.Listen != "127.0.0.1:4750" || c.OpsListen != ":4751" || c.MaxConnections != DefaultMaxConnections ||
		c.MinShutdownDelay != DefaultMinShutdownDelay || c.MaxShutdownDelay != DefaultMaxShutdownDelay ||
		p.LogFormat != "json" || p.LogLevel != slog.LevelInfo || c.AllowNonLoopback {
		t.Fatalf("defaults: %+v", p)
	}
}

func TestEveryFlagReadsTheEnv(t *testing.T) {
	e := map[string]string{
		"FALGUARD_LISTEN":             "127.0.0.1:5750",
		"FALGUARD_OPS_LISTEN":         "127.0.0.1:5751",
		"FALGUARD_ALLOW_NON_LOOPBACK": "true",
		"FALGUARD_CREDENTIALS_DIR":    "/var/run/falguard",
		"FALGUARD_KEY_ENV":            "MY_KEY",
		"FALGUARD_ALLOWED_APP":        "fal-ai/flux/*, fal-ai/fast-lcm-diffusion",
		"FALGUARD_POLICY_FILE":        "/p.json",
		"FALGUARD_UPSTREAM_OVERRIDE":  "https://fal.run=https://127.0.0.1:9443,https://rest.fal.ai=https://127.0.0.1:9444",
		"FALGUARD_UPSTREAM_CA_FILE":   "/ca.pem",
		"FALGUARD_MIN_SHUTDOWN_DELAY": "1s",
		"FALGUARD_MAX_SHUTDOWN_DELAY": "9s",
		"FALGUARD_MAX_CONNECTIONS":    "7",
		"FALGUARD_LOG_LEVEL":          "debug",
		"FALGUARD_LOG_FORMAT":         "text",
	}
	p, err := Parse([]string{"run"}, env(e), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := p.Run
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"listen", c.Listen, "127.0.0.1:5750"},
		{"ops-listen", c.OpsListen, "127.0.0.1:5751"},
		{"allow-non-loopback", c.AllowNonLoopback, true},
		{"credentials-dir", c.CredentialsDir, "/var/run/falguard"},
		{"key-env", c.KeyEnv, "MY_KEY"},
		{"allowed-app", strings.Join(c.AllowedApps, "|"), "fal-ai/flux/*|fal-ai/fast-lcm-diffusion"},
		{"policy-file", c.PolicyFile, "/p.json"},
		{"upstream-override", strings.Join(c.UpstreamOverride, "|"), "https://fal.run=https://127.0.0.1:9443|https://rest.fal.ai=https://127.0.0.1:9444"},
		{"upstream-ca-file", c.UpstreamCAFile, "/ca.pem"},
		{"min-shutdown-delay", c.MinShutdownDelay, time.Second},
		{"max-shutdown-delay", c.MaxShutdownDelay, 9 * time.Second},
		{"max-connections", c.MaxConnections, 7},
		{"log-level", p.LogLevel, slog.LevelDebug},
		{"log-format", p.LogFormat, "text"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s from %s: got %v, want %v", tc.name, EnvName(tc.name), tc.got, tc.want)
		}
	}
}

func TestCommandLineWinsOverEnv(t *testing.T) {
	p, err := Parse([]string{"--listen", "127.0.0.1:1", "--allowed-app", "a/b", "--allowed-app", "c/d"},
		env(map[string]string{"FALGUARD_LISTEN": "127.0.0.1:2", "FALGUARD_ALLOWED_APP": "x/y"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if p.Run.Listen != "127.0.0.1:1" || strings.Join(p.Run.AllowedApps, ",") != "a/b,c/d" {
		t.Fatalf("got %+v", p.Run)
	}
}

func TestSubcommands(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		env     map[string]string
		cmd     string
		opsAddr string
	}{
		{[]string{"wait"}, nil, CmdWait, "127.0.0.1:4751"},
		{[]string{"shutdown", "--ops-listen", "0.0.0.0:9000"}, nil, CmdShutdown, "127.0.0.1:9000"},
		{[]string{"wait"}, map[string]string{"FALGUARD_OPS_LISTEN": "[::]:4751"}, CmdWait, "127.0.0.1:4751"},
		{[]string{"wait"}, map[string]string{"FALGUARD_OPS_LISTEN": "10.0.0.5:4751"}, CmdWait, "10.0.0.5:4751"},
		{[]string{"version"}, nil, CmdVersion, "127.0.0.1:4751"},
	} {
		p, err := Parse(tc.args, env(tc.env), io.Discard)
		if err != nil || p.Command != tc.cmd || p.OpsAddr != tc.opsAddr {
			t.Errorf("%v: %+v %v", tc.args, p, err)
		}
	}
}

func TestErrorsNameTheProblem(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"serve"}, nil, `unknown command "serve"`},
		{[]string{"--log-level", "loud"}, nil, "--log-level"},
		{[]string{"--log-format", "xml"}, nil, "--log-format"},
		{nil, map[string]string{"FALGUARD_MAX_CONNECTIONS": "many"}, "FALGUARD_MAX_CONNECTIONS"},
		{nil, map[string]string{"FALGUARD_MIN_SHUTDOWN_DELAY": "5"}, "FALGUARD_MIN_SHUTDOWN_DELAY"},
		{[]string{"run", "extra"}, nil, "unexpected arguments"},
		{[]string{"--no-such-flag"}, nil, "no-such-flag"},
	} {
		_, err := Parse(tc.args, env(tc.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: got %v, want %q", tc.args, tc.env, err, tc.want)
		}
	}
}
