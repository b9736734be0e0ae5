package demo

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The names kubelet's atomic writer uses inside a Secret volume
// (k8s.io/kubernetes/pkg/volume/util/atomic_writer.go).
const (
	dataDirName    = "..data"
	newDataDirName = "..data_tmp"
)

// FileProjection is one file of a volume payload.
type FileProjection struct {
	Data []byte
	Mode os.FileMode
}

// AtomicWriter writes a volume the way kubelet does, so that a reader never
// sees a mix of old and new files:
//
//	<dir>/key          -> ..data/key
//	<dir>/policy.json  -> ..data/policy.json
//	<dir>/..data       -> ..2026_12_04_20_20_13.123456789   (swapped by rename)
//	<dir>/..2026_12_04_20_20_13.123456789/{key,policy.json}
//
// Each update writes a new timestamped directory, points a temporary symlink
// at it, renames that over ..data (atomic), then removes files no longer in
// the payload and the previous timestamped directory.
type AtomicWriter struct {
	Dir string
}

// Write publishes payload (relative path -> file). It reports whether anything
// changed: an identical payload leaves the volume untouched, as kubelet does.
func (w AtomicWriter) Write(payload map[string]FileProjection) (bool, error) {
	for p := range payload {
		if err := validatePath(p); err != nil {
			return false, err
		}
	}
	if err := os.MkdirAll(w.Dir, 0o755); err != nil {
		return false, fmt.Errorf("creating volume dir %s: %w", w.Dir, err)
	}
	oldTsName, err := os.Readlink(filepath.Join(w.Dir, dataDirName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("reading %s in %s: %w", dataDirName, w.Dir, err)
	}
	oldTsDir := ""
	oldPaths := map[string]bool{}
	if oldTsName != "" {
		oldTsDir = filepath.Join(w.Dir, oldTsName)
		if same, err := sameContent(oldTsDir, payload); err != nil {
			return false, err
		} else if same {
			return false, nil
		}
		if oldPaths, err = listFiles(oldTsDir); err != nil {
			return false, err
		}
	}

	tsDir, err := os.MkdirTemp(w.Dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return false, fmt.Errorf("creating timestamped dir in %s: %w", w.Dir, err)
	}
	if err := os.Chmod(tsDir, 0o755); err != nil {
		return false, fmt.Errorf("chmod %s: %w", tsDir, err)
	}
	for p, f := range payload {
		full := filepath.Join(tsDir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return false, fmt.Errorf("creating dir for %s: %w", p, err)
		}
		if err := os.WriteFile(full, f.Data, f.Mode); err != nil {
			return false, fmt.Errorf("writing %s: %w", p, err)
		}
		// WriteFile's mode is subject to the umask; kubelet chmods explicitly.
		if err := os.Chmod(full, f.Mode); err != nil {
			return false, fmt.Errorf("chmod %s: %w", p, err)
		}
	}

	// User-visible entries point through ..data, so they never need to change
	// once they exist; only the first write leaves them dangling for a moment.
	for top := range topLevel(payload) {
		link := filepath.Join(w.Dir, top)
		if _, err := os.Lstat(link); errors.Is(err, fs.ErrNotExist) {
			if err := os.Symlink(filepath.Join(dataDirName, top), link); err != nil {
				return false, fmt.Errorf("creating symlink %s: %w", link, err)
			}
		}
	}

	tmpLink := filepath.Join(w.Dir, newDataDirName)
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(tsDir), tmpLink); err != nil {
		return false, fmt.Errorf("creating %s: %w", tmpLink, err)
	}
	if err := os.Rename(tmpLink, filepath.Join(w.Dir, dataDirName)); err != nil {
		return false, fmt.Errorf("swapping %s: %w", dataDirName, err)
	}

	newTop := topLevel(payload)
	for p := range oldPaths {
		top := strings.SplitN(p, "/", 2)[0]
		if !newTop[top] {
			if err := os.Remove(filepath.Join(w.Dir, top)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return false, fmt.Errorf("removing stale %s: %w", top, err)
			}
		}
	}
	if oldTsDir != "" {
		if err := os.RemoveAll(oldTsDir); err != nil {
			return false, fmt.Errorf("removing previous %s: %w", oldTsDir, err)
		}
	}
	return true, nil
}

func validatePath(p string) error {
	switch {
	case p == "":
		return errors.New("volume file path is empty")
	case filepath.IsAbs(p):
		return fmt.Errorf("volume file path %q must be relative", p)
	case strings.HasPrefix(p, ".."):
		return fmt.Errorf("volume file path %q must not start with '..' (reserved for the atomic writer)", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." || part == "." || part == "" {
			return fmt.Errorf("volume file path %q must not contain empty, '.' or '..' elements", p)
		}
	}
	return nil
}

func topLevel(payload map[string]FileProjection) map[string]bool {
	out := map[string]bool{}
	for p := range payload {
		out[strings.SplitN(p, "/", 2)[0]] = true
	}
	return out
}

func listFiles(dir string) (map[string]bool, error) {
	out := map[string]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			out[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", dir, err)
	}
	return out, nil
}

func sameContent(dir string, payload map[string]FileProjection) (bool, error) {
	have, err := listFiles(dir)
	if err != nil {
		return false, err
	}
	if len(have) != len(payload) {
		return false, nil
	}
	for p, f := range payload {
		if !have[p] {
			return false, nil
		}
		full := filepath.Join(dir, p)
		b, err := os.ReadFile(full)
		if err != nil {
			return false, fmt.Errorf("reading %s: %w", full, err)
		}
		st, err := os.Stat(full)
		if err != nil {
			return false, fmt.Errorf("stat %s: %w", full, err)
		}
		if !bytes.Equal(b, f.Data) || st.Mode().Perm() != f.Mode.Perm() {
			return false, nil
		}
	}
	return true, nil
}

// sortedNames lists payload paths in order, for messages.
func sortedNames(payload map[string]FileProjection) []string {
	out := make([]string, 0, len(payload))
	for p := range payload {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}
