package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestBuiltImages checks the images `make images` wrote (make test-install
// builds them with IMAGE_TAG and points IMAGES_DIR at dist/): each passes
// Verify, and its entrypoint, taken out of the image, runs on this machine
// with nothing but itself, reporting the tag it was built with.
func TestBuiltImages(t *testing.T) {
	dir, tag := os.Getenv("IMAGES_DIR"), os.Getenv("IMAGE_TAG")
	if dir == "" || tag == "" {
		t.Skip("IMAGES_DIR and IMAGE_TAG unset: run through 'make test-install', which builds the images first")
	}
	tests := []struct {
		image string
		args  []string
		want  string
	}{
		// The manager prints its flags for -h and exits 0.
		{"falguard-manager", []string{"-h"}, "-leader-elect"},
		{"falguard-sidecar", []string{"version"}, tag},
	}
	for _, tc := range tests {
		t.Run(tc.image, func(t *testing.T) {
			path := filepath.Join(dir, tc.image+"-"+tag+"-linux-"+runtime.GOARCH+".oci.tar")
			img, err := ReadOCIArchive(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := Verify(img); err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			bin, err := ExtractFile(img, cf.Config.Entrypoint[0])
			if err != nil {
				t.Fatal(err)
			}
			exe := filepath.Join(t.TempDir(), "entrypoint")
			if err := os.WriteFile(exe, bin, 0o755); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(exe, tc.args...)
			cmd.Env = []string{} // as in the image: no PATH, no HOME
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s %v: %v\n%s", cf.Config.Entrypoint[0], tc.args, err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("%s %v printed %q, want %q in it", cf.Config.Entrypoint[0], tc.args, out, tc.want)
			}
		})
	}
}
