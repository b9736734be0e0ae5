// Package config parses the falguard-sidecar command line. Every flag can
// also be set from the environment as FALGUARD_<FLAG_IN_UPPER_SNAKE> (the
// webhook configures injected sidecars this way); a flag given on the command
// line wins over the env. Repeatable flags take a comma-separated env value.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/falguard/falguard/sidecar/server"
)

// EnvPrefix prefixes the env var of every flag.
const EnvPrefix = "FALGUARD_"

// Commands the binary accepts; run is the default.
const (
	CmdRun      = "run"
	CmdWait     = "wait"
	CmdShutdown = "shutdown"
	CmdVersion  = "version"
)

// Defaults.
const (
	DefaultListen           = "127.0.0.1:4750"
	DefaultOpsListen        = ":4751"
	DefaultMinShutdownDelay = 3 * time.Second
	DefaultMaxShutdownDelay = 20 * time.Second
	DefaultMaxConnections   = 1024
)

// Parsed is one parsed command line.
type Parsed struct {
	Command   string
	Run       server.Config
	LogLevel  slog.Level
	LogFormat string
	// OpsAddr is where wait/shutdown reach the ops listener (--ops-listen
	// with an empty or wildcard host read as 127.0.0.1).
	OpsAddr string
	Timeout time.Duration
}

// List is a repeatable string flag.
type List []string

func (l *List) String() string { return strings.Join(*l, ",") }

// Set appends one value.
func (l *List) Set(v string) error {
	if v = strings.TrimSpace(v); v != "" {
		*l = append(*l, v)
	}
	return nil
}

// EnvName is the env var read for a flag.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args (without the program name); getenv is os.Getenv in
// production. Usage and errors go to out.
func Parse(args []string, getenv func(string) string, out io.Writer) (*Parsed, error) {
	p := &Parsed{Command: CmdRun}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case CmdRun, CmdWait, CmdShutdown, CmdVersion:
			p.Command = args[0]
			args = args[1:]
		default:
			return nil, fmt.Errorf("unknown command %q: use run (default), wait, shutdown or version", args[0])
		}
	}
	fs := flag.NewFlagSet("falguard-sidecar "+p.Command, flag.ContinueOnError)
	fs.SetOutput(out)
	c := &p.Run
	var allowed, overrides List
	var level, opsListen string
	fs.StringVar(&opsListen, "ops-listen", DefaultOpsListen, "probes and metrics listener (wait/shutdown reach it on 127.0.0.1 at this port)")
	fs.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&p.LogFormat, "log-format", "json", "json or text")
	switch p.Command {
	case CmdRun:
		fs.StringVar(&c.Listen, "listen", DefaultListen, "app API listener (loopback only unless --allow-non-loopback)")
		fs.BoolVar(&c.AllowNonLoopback, "allow-non-loopback", false, "allow --listen on a non-loopback address and non-loopback Host headers")
		fs.StringVar(&c.CredentialsDir, "credentials-dir", "", "directory with files key (key_id:key_secret) and policy.json, kubelet atomic-writer layout")
		fs.StringVar(&c.KeyEnv, "key-env", "", "standalone: read the key from this env var (e.g. FAL_KEY)")
		fs.Var(&allowed, "allowed-app", "standalone: allowed app glob owner/alias[/path] (repeatable)")
		fs.StringVar(&c.PolicyFile, "policy-file", "", "standalone: policy in the policy.json shape")
		fs.Var(&overrides, "upstream-override", "send a canonical fal host elsewhere: https://fal.run=https://127.0.0.1:9443 (repeatable; fal.run, queue.fal.run, rest.fal.ai, rest.alpha.fal.ai, api.fal.ai)")
		fs.StringVar(&c.UpstreamCAFile, "upstream-ca-file", "", "extra CA (PEM) trusted for upstream TLS")
		fs.DurationVar(&c.MinShutdownDelay, "min-shutdown-delay", DefaultMinShutdownDelay, "after SIGTERM, keep serving this long before draining")
		fs.DurationVar(&c.MaxShutdownDelay, "max-shutdown-delay", DefaultMaxShutdownDelay, "drain in-flight requests and relays at most this long, then close WebSockets with 1001")
		fs.IntVar(&c.MaxConnections, "max-connections", DefaultMaxConnections, "cap on concurrent app API requests and realtime relays")
	case CmdWait:
		fs.DurationVar(&p.Timeout, "timeout", time.Minute, "give up after this long")
	case CmdShutdown:
		fs.DurationVar(&p.Timeout, "timeout", 10*time.Second, "give up after this long")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q: every setting is a --flag", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(EnvName(f.Name))
		if set[f.Name] || v == "" {
			return
		}
		vals := []string{v}
		if _, repeatable := f.Value.(*List); repeatable {
			vals = strings.Split(v, ",")
		}
		for _, one := range vals {
			if err := f.Value.Set(strings.TrimSpace(one)); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, err))
				return
			}
		}
	})
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c.AllowedApps, c.UpstreamOverride = allowed, overrides
	c.OpsListen = opsListen
	if err := p.LogLevel.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	if p.LogFormat != "json" && p.LogFormat != "text" {
		return nil, fmt.Errorf("--log-format %q: use json or text", p.LogFormat)
	}
	p.OpsAddr = opsAddr(opsListen)
	return p, nil
}

// opsAddr turns a listen address into one to dial from inside the pod.
func opsAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// Logger builds the slog logger the flags ask for.
func (p *Parsed) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: p.LogLevel}
	if p.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
