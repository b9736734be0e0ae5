package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat; it is
// 100 on every Linux the kernel ABI allows userspace to see.
const clockTicks = 100

// procs tracks every process the harness starts so that one cleanup, run on
// success, failure or a signal, ends them all.
type procs struct {
	mu   sync.Mutex
	list map[*proc]struct{}
}

var running = &procs{list: map[*proc]struct{}{}}

// proc is one child process (its own process group, killed with the harness).
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *bytes.Buffer // combined stdout/stderr tail for error messages
	done chan struct{}
	once sync.Once
}

type lockedBuf struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 64<<10 { // keep only a bounded tail for error messages
		l.b.Reset()
	}
	return l.b.Write(p)
}

// startProc starts name with args; stdout lines go to onLine when set.
func startProc(name string, env []string, dir string, onLine func(string), bin string, args ...string) (*proc, error) {
	// Stopped by stop() (SIGTERM, then SIGKILL), not by a context.
	cmd := exec.CommandContext(context.Background(), bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	// Own process group (so a kill reaches the children, e.g. nginx workers)
	// and SIGKILL if the harness dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, cmd: cmd, out: &bytes.Buffer{}, done: make(chan struct{})}
	lb := &lockedBuf{b: p.out}
	cmd.Stderr = lb
	var pw *io.PipeWriter
	if onLine != nil {
		var pr *io.PipeReader
		pr, pw = io.Pipe()
		cmd.Stdout = io.MultiWriter(lb, pw)
		go func() {
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				onLine(sc.Text())
			}
			_, _ = io.Copy(io.Discard, pr)
		}()
	} else {
		cmd.Stdout = lb
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	running.mu.Lock()
	running.list[p] = struct{}{}
	running.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		if pw != nil {
			_ = pw.Close()
		}
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// output is the recent output of the process, for error messages.
func (p *proc) output() string {
	s := p.out.String()
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return strings.TrimSpace(s)
}

// stop sends SIGTERM to the process group, then SIGKILL after a grace period.
func (p *proc) stop() {
	p.once.Do(func() {
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(3 * time.Second):
			}
		}
		// BENCH_LOG_DIR keeps each process's output tail, for debugging a peer.
		if dir := os.Getenv("BENCH_LOG_DIR"); dir != "" {
			f := filepath.Join(dir, strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(p.name)+".log")
			if lf, err := os.OpenFile(f, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
				_, _ = fmt.Fprintf(lf, "==== pid %d\n%s\n", pgid, p.out.String())
				_ = lf.Close()
			}
		}
		// Children that outlived the leader (none expected) go too.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		running.mu.Lock()
		delete(running.list, p)
		running.mu.Unlock()
	})
}

// stopAll ends every process still running.
func stopAll() {
	running.mu.Lock()
	ps := make([]*proc, 0, len(running.list))
	for p := range running.list {
		ps = append(ps, p)
	}
	running.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
	}
	wg.Wait()
}

// tree is pid and its direct children (nginx's workers; the sidecar and node
// have none that matter).
func tree(pid int) []int {
	pids := []int{pid}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return pids
	}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil || n == pid {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if f := statFields(b); len(f) > 1 && f[1] == strconv.Itoa(pid) {
			pids = append(pids, n)
		}
	}
	return pids
}

// statFields splits /proc/<pid>/stat after the command name, so f[0] is the
// state, f[1] the ppid, f[11] utime and f[12] stime.
func statFields(b []byte) []string {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// cpuSeconds is user+system CPU time used so far by pid and its children.
func cpuSeconds(pid int) float64 {
	var ticks int64
	for _, p := range tree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		f := statFields(b)
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return float64(ticks) / clockTicks
}

// memKiB sums a /proc/<pid>/status field (VmRSS, VmHWM) over pid and its
// children, in KiB.
func memKiB(pid int, field string) int64 {
	var total int64
	for _, p := range tree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += n
			}
		}
	}
	return total
}

// waitFor polls check every step until it succeeds, the process exits, or
// timeout passes.
func waitFor(ctx context.Context, p *proc, timeout, step time.Duration, what string, check func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if check() {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before %s: %s", p.name, what, p.output())
		}
		if time.Now().After(deadline) {
			out := ""
			if p != nil {
				out = ": " + p.output()
			}
			return fmt.Errorf("timed out after %s waiting for %s%s", timeout, what, out)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(step):
		}
	}
}
