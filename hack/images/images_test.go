package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func spec() Spec {
	return Spec{
		Name: "falguard-test", Binary: []byte("\x7fELF fake"), BinaryPath: "/manager",
		CACerts: []byte("-----BEGIN CERTIFICATE-----\n"), Version: "v1.2.3",
		Source: "https://example.invalid/falguard", OS: "linux", Arch: "amd64",
		Created: time.Unix(0, 0).UTC(),
	}
}

func TestRootFS(t *testing.T) {
	fs, err := RootFS(spec())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(fs))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	tests := []struct {
		path string
		mode int64
	}{
		{"manager", 0o755},
		{CACertPath, 0o644},
		{"etc/passwd", 0o644},
		{"etc/group", 0o644},
		{"tmp/", 0o1777},
	}
	for _, tc := range tests {
		h := got[tc.path]
		if h == nil {
			t.Errorf("%s missing from the layer (have %v)", tc.path, keys(got))
			continue
		}
		if h.Mode != tc.mode || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mode %o uid %d gid %d, want mode %o owned by root (the non-root user must not be able to change it)", tc.path, h.Mode, h.Uid, h.Gid, tc.mode)
		}
		if !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: mtime %v, want the fixed build time", tc.path, h.ModTime)
		}
	}
	if len(got) != 8 {
		t.Errorf("layer holds %d entries, want 8: %v", len(got), keys(got))
	}
}

func TestRootFSRejectsMissingInputs(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Spec)
		want   string
	}{
		{"no binary", func(s *Spec) { s.Binary = nil }, "empty binary"},
		{"no CA bundle", func(s *Spec) { s.CACerts = nil }, "empty CA bundle"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := spec()
			tc.modify(&s)
			_, err := RootFS(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestOCIArchiveRoundTrip(t *testing.T) {
	img, err := Image(spec())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "img.oci.tar")
	if err := WriteOCIArchive(path, img, "ghcr.io/falguard/falguard-test:v1.2.3"); err != nil {
		t.Fatal(err)
	}
	back, err := ReadOCIArchive(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(back); err != nil {
		t.Fatalf("a freshly built image fails verification: %v", err)
	}
	cf, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || cf.Config.Entrypoint[0] != "/manager" || cf.Architecture != "amd64" {
		t.Errorf("config user %q entrypoint %q arch %q", cf.Config.User, cf.Config.Entrypoint, cf.Architecture)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "v1.2.3" {
		t.Errorf("labels %v lack the version", cf.Config.Labels)
	}
	m, err := back.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
		t.Errorf("media types %q / %q, want OCI", m.MediaType, m.Config.MediaType)
	}

	// The same inputs give the same digest: builds are reproducible.
	again, err := Image(spec())
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	d3, _ := back.Digest()
	if d1 != d2 || d1 != d3 {
		t.Errorf("digests differ: built %s, rebuilt %s, read back %s", d1, d2, d3)
	}
}

func TestVerifyRejects(t *testing.T) {
	base, err := Image(spec())
	if err != nil {
		t.Fatal(err)
	}
	withConfig := func(f func(*v1.ConfigFile)) v1.Image {
		cf, _ := base.ConfigFile()
		cf = cf.DeepCopy()
		f(cf)
		img, err := mutate.ConfigFile(base, cf)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	tests := []struct {
		name string
		img  v1.Image
		want string
	}{
		{"root user", withConfig(func(c *v1.ConfigFile) { c.Config.User = "" }), "numeric user"},
		{"named user", withConfig(func(c *v1.ConfigFile) { c.Config.User = "nonroot" }), "numeric user"},
		{"missing entrypoint binary", withConfig(func(c *v1.ConfigFile) { c.Config.Entrypoint = []string{"/nope"} }), "missing or not executable"},
		{"not linux", withConfig(func(c *v1.ConfigFile) { c.OS = "windows" }), "want linux"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(tc.img)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestGoBuildIsStatic builds a tiny program the way the real images are built
// and checks the result needs no dynamic loader (it runs on an empty base).
func TestGoBuildIsStatic(t *testing.T) {
	bin, err := goBuild(".", "./testdata/hello", runtime.GOARCH, "stamp-7c1e9a")
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("not an ELF binary: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("binary has a dynamic loader (PT_INTERP): CGO_ENABLED=0 did not take")
		}
	}
	if !bytes.Contains(bin, []byte("stamp-7c1e9a")) {
		t.Error("version was not stamped into the binary")
	}
}

func keys(m map[string]*tar.Header) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
