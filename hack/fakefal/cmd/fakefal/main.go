// Command fakefal runs the local stand-in for fal.ai (see hack/fakefal) for
// out-of-process users: the demo, e2e tests, benchmarks and the conformance
// suite. It writes where it listens to --state-file and serves a plain-HTTP
// control API on loopback. Never used by the product.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/falguard/falguard/hack/fakefal"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if err := run(os.Args[1:], sig); err != nil {
		fmt.Fprintln(os.Stderr, "fakefal:", err)
		os.Exit(1)
	}
}

// run serves until stop delivers.
func run(args []string, stop <-chan os.Signal) error {
	var keys, adminKeys multiFlag
	fs := flag.NewFlagSet("fakefal", flag.ContinueOnError)
	fs.Var(&keys, "key", `API key "key_id:key_secret" (repeatable)`)
	fs.Var(&adminKeys, "admin-key", `ADMIN-scope key "key_id:key_secret" for the Platform keys API (repeatable)`)
	stateFile := fs.String("state-file", "", "write {urls, overrides, caFile, control} as JSON here once listening")
	controlListen := fs.String("control-listen", "127.0.0.1:0", "loopback address of the plain-HTTP control API")
	ttlMax := fs.Duration("token-ttl-max", time.Hour, "cap on token_expiration")
	maxCalls := fs.Int("max-calls", 0, "bound the recorded call log (the oldest half is dropped past it); 0 = unbounded")
	if err := fs.Parse(args); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(*controlListen)
	if err != nil || (host != "127.0.0.1" && host != "localhost" && host != "::1") {
		return fmt.Errorf("--control-listen %q must be a loopback host:port such as 127.0.0.1:0", *controlListen)
	}

	srv, err := fakefal.Start(fakefal.Options{Keys: keys, AdminKeys: adminKeys, TokenTTLMax: *ttlMax, MaxCalls: *maxCalls})
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", *controlListen)
	if err != nil {
		return fmt.Errorf("listening for the control API on %s: %w", *controlListen, err)
	}
	controlURL := "http://" + ln.Addr().String()
	ctl := &http.Server{Handler: srv.ControlHandler(controlURL), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = ctl.Serve(ln) }()
	defer func() { _ = ctl.Close() }()

	state, err := json.MarshalIndent(srv.State(controlURL), "", "  ")
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	if *stateFile != "" {
		// Written atomically so a poller never reads half a file.
		tmp := filepath.Join(filepath.Dir(*stateFile), "."+filepath.Base(*stateFile)+".tmp")
		if err := os.WriteFile(tmp, append(state, '\n'), 0o600); err != nil {
			return fmt.Errorf("writing --state-file: %w", err)
		}
		if err := os.Rename(tmp, *stateFile); err != nil {
			return fmt.Errorf("writing --state-file: %w", err)
		}
		defer func() { _ = os.Remove(*stateFile) }()
	}
	fmt.Fprintf(os.Stderr, "fakefal: listening; control API %s\n", controlURL)

	<-stop
	return nil
}
