package demo

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// alive: a zombie (state Z, killed but not yet reaped by init) is dead.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// Stop must take the whole process group down: a container's children (npm
// under make, node under npm) must not outlive the harness.
func TestProcsStopKillsTheGroup(t *testing.T) {
	tests := []struct {
		name   string
		script string // prints the grandchild's pid, then waits
		grace  time.Duration
	}{
		{"terminates on SIGTERM", `sleep 300 & echo $!; wait`, 5 * time.Second},
		{"SIGKILL after the grace period when SIGTERM is ignored", `trap '' TERM; sleep 300 & echo $!; wait; wait`, 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := NewProcs(t.TempDir())
			ps.Grace = tt.grace
			p, err := ps.Start("sh", exec.Command("sh", "-c", tt.script))
			if err != nil {
				t.Fatal(err)
			}
			var child int
			for deadline := time.Now().Add(5 * time.Second); child == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				for _, line := range strings.Split(p.Tail(), "\n") {
					if n, err := strconv.Atoi(strings.TrimSpace(line)); err == nil {
						child = n
					}
				}
			}
			if child == 0 {
				t.Fatalf("the script never printed its child's pid: %q", p.Tail())
			}
			ps.Close()
			if done, _ := p.Exited(); !done {
				t.Error("the process is still running after Close")
			}
			for deadline := time.Now().Add(2 * time.Second); alive(child) && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			}
			if alive(child) {
				_ = syscall.Kill(child, syscall.SIGKILL)
				t.Errorf("grandchild %d survived Stop", child)
			}
		})
	}
}
