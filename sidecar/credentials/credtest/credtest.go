// Package credtest writes credentials directories the way kubelet does
// (atomic writer: files are symlinks into ..data, which is swapped to a new
// timestamped directory on every update). For tests only.
package credtest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
)

var seq atomic.Int64

// Write publishes files into dir as one atomic update, creating the
// top-level symlinks on first use.
func Write(dir string, files map[string]string) error {
	n := seq.Add(1)
	ts := fmt.Sprintf("..2026_12_04_00_00_00.%d", n)
	if err := os.MkdirAll(filepath.Join(dir, ts), 0o755); err != nil {
		return err
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, ts, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, fmt.Sprintf("..data_tmp%d", n))
	if err := os.Symlink(ts, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return err
		}
	}
	return nil
}
