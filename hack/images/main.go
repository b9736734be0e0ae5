// Command images builds falguard's container images without a Docker daemon:
// each is a static (CGO_ENABLED=0) Go binary on an empty base with the build
// machine's CA bundle and numeric user 65532, written as an OCI archive
// (an OCI image layout in one tar) under dist/.
//
//	go run . build -root ../.. -out ../../dist -tag v0.1.0 [-images manager,sidecar]
//	go run . verify ../../dist/*.oci.tar
package main

import (
	"archive/tar"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// target is one image the project ships.
type target struct {
	name, pkg, binaryPath, description string
}

var targets = map[string]target{
	"manager": {"falguard-manager", ".", "/manager", "falguard operator: FalCredential controller and pod-injection webhook"},
	"sidecar": {"falguard-sidecar", "./sidecar/cmd/falguard-sidecar", "/falguard-sidecar", "falguard sidecar: holds the fal key for one pod"},
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: images build|verify [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = build(os.Args[2:])
	case "verify":
		err = verifyFiles(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: want build or verify", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func build(args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	root := fs.String("root", "../..", "repository root (the Go module to build from)")
	out := fs.String("out", "../../dist", "directory for the OCI archives")
	registry := fs.String("registry", "ghcr.io/falguard", "registry and namespace of the image names")
	tag := fs.String("tag", "dev", "image tag, also stamped into the binaries as main.version")
	arch := fs.String("arch", runtime.GOARCH, "GOARCH of the images (linux only)")
	caFile := fs.String("ca-file", "/etc/ssl/certs/ca-certificates.crt", "CA bundle copied into the images")
	which := fs.String("images", "manager,sidecar", "comma-separated images to build: manager, sidecar")
	source := fs.String("source", "https://github.com/falguard/falguard", "org.opencontainers.image.source label")
	_ = fs.Parse(args)

	ca, err := os.ReadFile(*caFile)
	if err != nil {
		return fmt.Errorf("reading the CA bundle for the images (set -ca-file, e.g. from Debian's ca-certificates): %w", err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	// Fixed timestamps make a rebuild of the same sources produce the same digest.
	created := time.Unix(0, 0).UTC()
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		var sec int64
		if _, err := fmt.Sscan(epoch, &sec); err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", epoch)
		}
		created = time.Unix(sec, 0).UTC()
	}
	for _, key := range strings.Split(*which, ",") {
		t, ok := targets[strings.TrimSpace(key)]
		if !ok {
			return fmt.Errorf("unknown image %q: want manager or sidecar", key)
		}
		bin, err := goBuild(*root, t.pkg, *arch, *tag)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		img, err := Image(Spec{
			Name: t.name, Binary: bin, BinaryPath: t.binaryPath, CACerts: ca, Version: *tag,
			Source: *source, Description: t.description, OS: "linux", Arch: *arch, Created: created,
		})
		if err != nil {
			return err
		}
		ref := fmt.Sprintf("%s/%s:%s", *registry, t.name, *tag)
		path := filepath.Join(*out, fmt.Sprintf("%s-%s-linux-%s.oci.tar", t.name, *tag, *arch))
		if err := WriteOCIArchive(path, img, ref); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if err := report(path, len(bin)); err != nil {
			return err
		}
	}
	return nil
}

// goBuild compiles pkg as a static linux binary and returns its bytes.
func goBuild(root, pkg, arch, version string) ([]byte, error) {
	tmp, err := os.CreateTemp("", "falguard-image-bin-")
	if err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	// Bounded: a cold build of the manager takes minutes on 2 cores, never an hour.
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X main.version="+version, "-o", tmp.Name(), pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s: %w", pkg, err)
	}
	return os.ReadFile(tmp.Name())
}

func report(path string, binSize int) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	img, err := ReadOCIArchive(path)
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var compressed int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return err
		}
		compressed += n
	}
	var uncompressed int64
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
		uncompressed += n
	}
	fmt.Printf("%s: pull size (compressed layer) %.1f MiB, unpacked %.1f MiB, binary %.1f MiB, archive %.1f MiB\n",
		path, mib(compressed), mib(uncompressed), mib(int64(binSize)), mib(st.Size()))
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// ReadOCIArchive unpacks an archive written by WriteOCIArchive into a temp dir
// and returns its single image. The image stays readable until the process ends.
func ReadOCIArchive(path string) (v1.Image, error) {
	dir, err := os.MkdirTemp("", "falguard-oci-read-")
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		name := filepath.Clean(h.Name)
		if strings.HasPrefix(name, "..") || filepath.IsAbs(name) {
			return nil, fmt.Errorf("%s: unsafe path %q", path, h.Name)
		}
		dst := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return nil, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return nil, err
			}
			w, err := os.Create(dst)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(w, tr)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: not an OCI layout: %w", path, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) != 1 {
		return nil, fmt.Errorf("%s: want one image in the archive, found %d", path, len(m.Manifests))
	}
	return idx.Image(m.Manifests[0].Digest)
}

// ExtractFile returns the content of the file at path (absolute, as in the
// running container) from the image's layers; a later layer wins.
func ExtractFile(img v1.Image, path string) ([]byte, error) {
	want := strings.TrimPrefix(path, "/")
	var found []byte
	err := walkLayers(img, func(h *tar.Header, r io.Reader) error {
		if h.Name != want || h.Typeflag != tar.TypeReg {
			return nil
		}
		var err error
		found, err = io.ReadAll(r)
		return err
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("%s is not in the image", path)
	}
	return found, nil
}

// walkLayers calls fn for every tar entry of every layer, bottom layer first.
func walkLayers(img v1.Image, fn func(h *tar.Header, r io.Reader) error) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		if err := walkLayer(l, fn); err != nil {
			return err
		}
	}
	return nil
}

func walkLayer(l v1.Layer, fn func(h *tar.Header, r io.Reader) error) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

// verifyFiles checks built archives for what the manifests rely on.
func verifyFiles(paths []string) error {
	if len(paths) == 0 {
		return errors.New("verify: no archives given")
	}
	for _, p := range paths {
		img, err := ReadOCIArchive(p)
		if err != nil {
			return err
		}
		if err := Verify(img); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		fmt.Println("ok", p)
	}
	return nil
}

// Verify checks an image's config and filesystem: numeric non-root user, an
// entrypoint that exists and is executable, a CA bundle, nothing else of note.
func Verify(img v1.Image) error {
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("%d:%d", NonRootUID, NonRootUID); cf.Config.User != want {
		return fmt.Errorf("user is %q, want %q (runAsNonRoot needs a numeric user)", cf.Config.User, want)
	}
	if len(cf.Config.Entrypoint) != 1 {
		return fmt.Errorf("entrypoint %q: want the one binary", cf.Config.Entrypoint)
	}
	if cf.OS != "linux" {
		return fmt.Errorf("os %q, want linux", cf.OS)
	}
	seen := map[string]*tar.Header{}
	if err := walkLayers(img, func(h *tar.Header, _ io.Reader) error {
		seen["/"+strings.TrimSuffix(h.Name, "/")] = h
		return nil
	}); err != nil {
		return err
	}
	entry := seen[cf.Config.Entrypoint[0]]
	if entry == nil || entry.Mode&0o111 == 0 {
		return fmt.Errorf("entrypoint %s is missing or not executable", cf.Config.Entrypoint[0])
	}
	if ca := seen["/"+CACertPath]; ca == nil || ca.Size == 0 {
		return fmt.Errorf("no CA bundle at /%s", CACertPath)
	}
	for name, h := range seen {
		if h.Mode&0o6000 != 0 {
			return fmt.Errorf("%s is setuid/setgid", name)
		}
	}
	return nil
}
