// Command demo is `make demo`: falguard's whole system on this machine, on
// 127.0.0.1 only, with no cluster, no fal account and no internet (beyond the
// Go module proxy and npm the first time). It prints each step with timings,
// then stays up with a kubeconfig and copy-paste commands until Ctrl-C, and
// removes every process and temporary file on exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/falguard/falguard/hack/demo"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		exitAfter = flag.Bool("exit-after-summary", false, "stop and clean up right after the summary (CI); also DEMO_EXIT=1")
		stay      = flag.Bool("stay", false, "stay up after the summary even when stdin is not a terminal; also DEMO_EXIT=0")
		grace     = flag.Duration("grace-period", 20*time.Second, "rotation.gracePeriod of the demo FalCredential: how long the old key lives after a rotation")
		keep      = flag.Bool("keep", false, "keep the run directory (logs, kubeconfig, volumes) after exit")
	)
	flag.Parse()
	exitAfterSummary, why := decideExit(*exitAfter, *stay)

	// SIGHUP (terminal closed) and SIGPIPE (output piped into `head`) would
	// otherwise kill the demo before it stops kube-apiserver and etcd.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	defer stop()

	fmt.Println("falguard demo: the operator, its webhook, the sidecar and fal's official client, all on 127.0.0.1")
	fmt.Println("(no cluster, no fal account: kube-apiserver + etcd from envtest, fakefal in place of fal.ai)")
	fmt.Println()
	began := time.Now()
	env, err := demo.Start(ctx, demo.Options{Out: os.Stdout, KeepRunDir: *keep})
	if err != nil {
		return fail(ctx, nil, err)
	}
	defer func() {
		t := time.Now()
		env.Close()
		fmt.Printf("Cleaned up in %s.\n", round(time.Since(t)))
		for _, l := range env.Leftovers() {
			fmt.Fprintf(os.Stderr, "warning: after cleanup, %s\n", l)
		}
	}()
	startedIn := time.Since(began)

	res, err := demo.RunDemo(ctx, env, *grace)
	if err != nil {
		env.Steps.Fail(err)
		return fail(ctx, env, err)
	}
	summary(env, res, startedIn, time.Since(began))

	if exitAfterSummary {
		fmt.Printf("Exiting after the summary (%s); cleaning up.\n", why)
		return 0
	}
	fmt.Printf("Staying up (%s). Press Ctrl-C to stop everything and remove %s.\n", why, env.RunDir)
	select {
	case <-ctx.Done():
	case <-env.Manager().Done():
		fmt.Fprintln(os.Stderr, "the manager exited unexpectedly; its last output:")
		fmt.Fprintln(os.Stderr, env.Manager().Tail())
	}
	fmt.Println("\nStopping the app, the sidecar, the manager, fakefal and the control plane ...")
	return 0
}

// decideExit: flags win, then DEMO_EXIT, then whether a person is at a
// terminal (stdin is a terminal: stay up; otherwise it is CI: exit).
func decideExit(exitFlag, stayFlag bool) (bool, string) {
	switch {
	case exitFlag:
		return true, "--exit-after-summary"
	case stayFlag:
		return false, "--stay"
	}
	if v, ok := os.LookupEnv("DEMO_EXIT"); ok && v != "" {
		b, err := strconv.ParseBool(v)
		if err == nil {
			if b {
				return true, "DEMO_EXIT=" + v
			}
			return false, "DEMO_EXIT=" + v
		}
		fmt.Fprintf(os.Stderr, "DEMO_EXIT=%q is not a boolean (use 1 or 0); deciding from the terminal instead\n", v)
	}
	if st, err := os.Stdin.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
		return false, "stdin is a terminal; DEMO_EXIT=1 exits after the summary instead"
	}
	return true, "stdin is not a terminal; DEMO_EXIT=0 or --stay keeps it up"
}

func fail(ctx context.Context, env *demo.Env, err error) int {
	if errors.Is(ctx.Err(), context.Canceled) {
		fmt.Fprintln(os.Stderr, "\ninterrupted; cleaning up")
		return 130
	}
	fmt.Fprintf(os.Stderr, "\nmake demo failed: %v\n", err)
	if env != nil {
		fmt.Fprintln(os.Stderr, "\nThe last output of every process involved:")
		env.DumpLogs(os.Stderr)
	}
	return 1
}

func summary(env *demo.Env, res *demo.DemoResult, startedIn, total time.Duration) {
	kubectl, _ := filepath.Rel(env.Root, env.Kubectl)
	if wd, _ := os.Getwd(); wd != env.Root {
		kubectl = env.Kubectl
	}
	kc := env.Kubeconfig
	pod := res.Pod
	fmt.Printf(`
================================================================================
falguard is up. The system started in %s; the whole story took %s.

  rotation: key %s -> %s; the old key is now refused by fal (HTTP %d)
  traffic during the rotation: %s

Look around (copy-paste):
  %[7]s --kubeconfig %[8]s get falcred -A
  %[7]s --kubeconfig %[8]s get pods,deploy -n %[9]s -o wide
  %[7]s --kubeconfig %[8]s get pod -n %[9]s %[10]s -o yaml   # the injected sidecar, as stored
  %[7]s --kubeconfig %[8]s describe falcred -n %[9]s %[11]s
  %[7]s --kubeconfig %[8]s annotate falcred -n %[9]s %[11]s falguard.dev/rotate-now=$(date +%%s) --overwrite

Talk to the sidecar as the app does (no key needed, none exposed):
  curl -s %[12]s/api/fal/proxy -H 'x-fal-target-url: https://fal.run/%[13]s' -H 'content-type: application/json' -d '{"prompt":"hello"}'
  curl -s '%[12]s/api/fal/token?app=%[14]s' | head -c 120; echo
  curl -s %[15]s/metrics | grep '^falguard_sidecar'

Process logs: %[16]s
Volume the sidecar reads (kubelet's ..data layout): %[17]s
================================================================================
`,
		round(startedIn), round(total),
		res.OldKeyID, res.NewKeyID, res.RevokedCode, res.Traffic.Summary(),
		kubectl, kc, demo.DemoNamespace, pod.Created.Name, demo.DemoCredential,
		pod.SidecarURL(), demo.ModelApp, demo.RealtimeApp, pod.OpsURL(),
		filepath.Join(env.RunDir, "logs"), pod.CredentialsDir())
}

func round(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }
