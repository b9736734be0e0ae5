package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NonRootUID is the numeric user (and group) every image runs as; numeric so
// runAsNonRoot can verify it without an /etc/passwd lookup.
const NonRootUID = 65532

// CACertPath is where Go's crypto/x509 looks first on Linux.
const CACertPath = "etc/ssl/certs/ca-certificates.crt"

// Spec describes one image: a static binary on a scratch base.
type Spec struct {
	Name        string // e.g. falguard-manager
	Binary      []byte // the static executable
	BinaryPath  string // absolute path inside the image, e.g. /manager
	CACerts     []byte // PEM bundle put at /etc/ssl/certs/ca-certificates.crt
	Version     string
	Source      string // org.opencontainers.image.source
	Description string
	OS, Arch    string
	Created     time.Time // fixed, so rebuilding the same inputs gives the same digest
}

type file struct {
	path string
	mode int64
	data []byte
	dir  bool
}

// RootFS returns the single layer of the image as an uncompressed tar: the
// CA bundle, a passwd/group naming the non-root user, the binary, and /tmp
// (for tools that expect it; the pods still mount an emptyDir there because the
// root filesystem is read-only).
func RootFS(s Spec) ([]byte, error) {
	if len(s.Binary) == 0 {
		return nil, fmt.Errorf("image %s: empty binary", s.Name)
	}
	if len(s.CACerts) == 0 {
		return nil, fmt.Errorf("image %s: empty CA bundle", s.Name)
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRootUID, NonRootUID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRootUID)
	files := []file{
		{path: "etc/", dir: true, mode: 0o755},
		{path: "etc/ssl/", dir: true, mode: 0o755},
		{path: "etc/ssl/certs/", dir: true, mode: 0o755},
		{path: CACertPath, mode: 0o644, data: s.CACerts},
		{path: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{path: "etc/group", mode: 0o644, data: []byte(group)},
		{path: "tmp/", dir: true, mode: 0o1777},
		{path: s.BinaryPath[1:], mode: 0o755, data: s.Binary},
	}
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.path, Mode: f.mode, ModTime: s.Created, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("image %s: writing %s: %w", s.Name, f.path, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("image %s: writing %s: %w", s.Name, f.path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Image assembles the OCI image for s.
func Image(s Spec) (v1.Image, error) {
	rootfs, err := RootFS(s)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(rootfs)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.Name, err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{CreatedBy: "falguard hack/images: static " + s.BinaryPath + " on scratch", Created: v1.Time{Time: s.Created}},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Name, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = s.OS, s.Arch
	cf.Created = v1.Time{Time: s.Created}
	cf.Config.User = fmt.Sprintf("%d:%d", NonRootUID, NonRootUID)
	cf.Config.Entrypoint = []string{s.BinaryPath}
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/", "SSL_CERT_FILE=/" + CACertPath}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       s.Name,
		"org.opencontainers.image.description": s.Description,
		"org.opencontainers.image.version":     s.Version,
		"org.opencontainers.image.source":      s.Source,
		"org.opencontainers.image.licenses":    "Apache-2.0",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", s.Name, err)
	}
	return mutate.CreatedAt(img, v1.Time{Time: s.Created})
}

// WriteOCIArchive writes img as an OCI image layout packed into one tar file
// (what `skopeo copy oci-archive:FILE docker://REPO:TAG`, `podman load` and
// `crane push` read). ref is recorded as the image's ref name.
func WriteOCIArchive(path string, img v1.Image, ref string) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".oci-layout-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref,
	})); err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	return tarDir(dir, path)
}

// tarDir packs dir's regular files and directories into a deterministic tar.
func tarDir(dir, dst string) error {
	var paths []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp) }() // gone already after the rename
	tw := tar.NewWriter(f)
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if info.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			continue
		}
		h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, info.Size()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, src)
		_ = src.Close() // read-only: nothing to lose
		if err != nil {
			return fmt.Errorf("packing %s: %w", rel, err)
		}
	}
	if err := tw.Close(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
