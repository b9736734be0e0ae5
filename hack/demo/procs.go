package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// tailBytes is how much of each process's output is kept in memory for the
// failure report; the full log is in the run directory.
const tailBytes = 64 << 10

// Procs starts subprocesses in their own process groups, keeps their logs and
// stops every one of them (and their children) on Close, whatever happened.
type Procs struct {
	logDir string
	// Grace is how long Close waits after SIGTERM before SIGKILL (default 10s).
	Grace time.Duration

	mu   sync.Mutex
	list []*Proc
}

// NewProcs keeps process logs in logDir.
func NewProcs(logDir string) *Procs { return &Procs{logDir: logDir} }

// Proc is one started subprocess.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	tail    *tailBuffer
	logFile *os.File
	done    chan struct{}
	err     error
}

// Start runs cmd, sending stdout and stderr to a log file named after name.
func (ps *Procs) Start(name string, cmd *exec.Cmd) (*Proc, error) {
	return ps.StartTee(name, cmd, nil)
}

// StartTee is Start with stdout also copied to tee (closed when the process
// exits, so a reader sees EOF), for processes the harness talks to.
func (ps *Procs) StartTee(name string, cmd *exec.Cmd, tee io.WriteCloser) (*Proc, error) {
	safe := strings.NewReplacer("/", "_", " ", "_").Replace(name)
	logPath := filepath.Join(ps.logDir, safe+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log file for %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, tail: &tailBuffer{max: tailBytes}, logFile: f, done: make(chan struct{})}
	sink := io.MultiWriter(f, p.tail)
	cmd.Stdout, cmd.Stderr = sink, sink
	if tee != nil {
		cmd.Stdout = io.MultiWriter(sink, tee)
	}
	// Own process group, so Stop reaches grandchildren (npm, node); and a
	// parent-death signal, so a harness killed with SIGKILL leaves nothing behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	_, _ = fmt.Fprintf(f, "### %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		if tee != nil {
			tee.Close()
		}
		return nil, fmt.Errorf("starting %s (%s): %w", name, cmd.Path, err)
	}
	go func() {
		p.err = cmd.Wait()
		if tee != nil {
			tee.Close()
		}
		_, _ = fmt.Fprintf(f, "### %s: exited: %v\n", time.Now().Format(time.RFC3339), exitText(p.err))
		close(p.done)
	}()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

func exitText(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Tail returns the last part of the process's output.
func (p *Proc) Tail() string { return p.tail.String() }

// Signal sends sig to the process's whole group.
func (p *Proc) Signal(sig syscall.Signal) {
	if p.cmd.Process != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

// Stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs
// it. It returns how the process exited; calling it again is harmless.
func (p *Proc) Stop(grace time.Duration) error {
	if done, err := p.Exited(); done {
		p.closeLog()
		return err
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Signal(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.Pid())
		}
	}
	// The group may outlive its leader (a child that ignored SIGTERM).
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.closeLog()
	return p.err
}

func (p *Proc) closeLog() {
	<-p.done
	_ = p.logFile.Close()
}

// Close stops every process, newest first (apps before the sidecars and the
// manager they depend on).
func (ps *Procs) Close() {
	ps.mu.Lock()
	list := append([]*Proc(nil), ps.list...)
	ps.mu.Unlock()
	grace := ps.Grace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	for i := len(list) - 1; i >= 0; i-- {
		_ = list[i].Stop(grace)
	}
}

// All returns every process started so far.
func (ps *Procs) All() []*Proc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]*Proc(nil), ps.list...)
}

// DumpLogs writes the tail of every process's output to w, for failure reports.
func (ps *Procs) DumpLogs(w io.Writer) {
	for _, p := range ps.All() {
		state := "running"
		if done, err := p.Exited(); done {
			state = "exited: " + exitText(err)
		}
		_, _ = fmt.Fprintf(w, "\n===== %s (%s; full log %s) =====\n%s\n", p.Name, state, p.LogPath, p.Tail())
	}
}

// waitUntil runs check every interval until it passes or ctx ends; it gives
// up early when one of watch exits, with that process's last output.
func waitUntil(ctx context.Context, what string, every time.Duration, check func(context.Context) error, watch ...*Proc) error {
	var last error
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		for _, p := range watch {
			if done, err := p.Exited(); done {
				return fmt.Errorf("%s: %s exited (%s) before it was ready; its last output:\n%s", what, p.Name, exitText(err), indent(lastLines(p.Tail(), 25)))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %w)", what, context.Cause(ctx), last)
		case <-t.C:
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(b)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

var errNotReady = errors.New("not ready yet")
