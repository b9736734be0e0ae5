// Command falguard-sidecar keeps a fal key out of the app container: it
// proxies fal calls, mints realtime tokens and relays realtime WebSockets on
// 127.0.0.1, adding the key it reads from its credentials directory.
//
//	falguard-sidecar [run|wait|shutdown|version] [flags]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/falguard/falguard/sidecar/config"
	"github.com/falguard/falguard/sidecar/server"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	p, err := config.Parse(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "falguard-sidecar:", err)
		return 2
	}
	switch p.Command {
	case config.CmdVersion:
		_, _ = fmt.Fprintln(stdout, version)
		return 0
	case config.CmdWait:
		return wait(ctx, p, stderr)
	case config.CmdShutdown:
		return shutdown(ctx, p, stderr)
	}
	log := p.Logger(stderr)
	p.Run.Version = version
	p.Run.Logger = log
	p.Run.Getenv = getenv
	srv, err := server.New(p.Run)
	if err != nil {
		log.Error("cannot start", "error", err.Error())
		return 1
	}
	if err := srv.Run(ctx); err != nil {
		log.Error("stopped with an error", "error", err.Error())
		return 1
	}
	return 0
}

var client = &http.Client{Timeout: 2 * time.Second}

// wait polls /readyz until it answers 200 (for an exec hook or a script
// that must not start before the sidecar can serve).
func wait(ctx context.Context, p *config.Parsed, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	url := "http://" + p.OpsAddr + "/readyz"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return 0
			}
		}
		select {
		case <-ctx.Done():
			_, _ = fmt.Fprintf(stderr, "falguard-sidecar wait: %s not ready after %s\n", url, p.Timeout)
			return 1
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// shutdown asks the sidecar to stop (POST /quitquitquit on the ops port).
func shutdown(ctx context.Context, p *config.Parsed, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	url := "http://" + p.OpsAddr + "/quitquitquit"
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "falguard-sidecar shutdown: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = fmt.Fprintf(stderr, "falguard-sidecar shutdown: %s answered HTTP %d\n", url, resp.StatusCode)
		return 1
	}
	return 0
}
