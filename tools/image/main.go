// Command image builds the custom CoreDNS image as an OCI archive (an OCI
// image layout in one tar file) without a Docker engine or a registry: one
// layer on an empty base holding the static binary, CA certificates and a
// nonroot user, configured as the upstream CoreDNS image is (numeric nonroot
// user, the binary allowed to bind port 53 by a file capability). Given a
// binary for each of several architectures, it writes one image of each
// under an image index, as a multi-arch image is pushed.
//
// -entrypoint and -title package another static binary the same way (the
// integration tests' pause image: test/integration/testdata/pause).
//
// Load the archive with `docker load`, `podman load`, `ctr -n k8s.io images
// import` or `kind load image-archive`, or push it with
// `skopeo copy oci-archive:FILE docker://REGISTRY/NAME:TAG`.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// nonroot is the user the image runs as: distroless's nonroot, as upstream.
const nonroot = 65532

// capNetBindService is the security.capability xattr value that
// `setcap cap_net_bind_service=+ep` writes (VFS_CAP_REVISION_2, effective
// flag, permitted bit 10), little-endian: the nonroot process may bind :53.
var capNetBindService = []byte{
	0x01, 0x00, 0x00, 0x02, // magic: revision 2 | effective
	0x00, 0x04, 0x00, 0x00, // permitted[0]: 1 << CAP_NET_BIND_SERVICE (10)
	0x00, 0x00, 0x00, 0x00, // inheritable[0]
	0x00, 0x00, 0x00, 0x00, // permitted[1]
	0x00, 0x00, 0x00, 0x00, // inheritable[1]
}

// spec is what goes into the image.
type spec struct {
	binary   string    // a static (CGO_ENABLED=0) coredns binary
	name     string    // the binary's file name in the image's root, its entrypoint
	title    string    // the org.opencontainers.image.title label
	caBundle string    // a CA bundle to ship as /etc/ssl/certs/ca-certificates.crt; "" for none
	arch     string    // GOARCH the binary was built for
	created  time.Time // every timestamp in the image, for reproducible digests
}

// binaries are the -binary flags: a static coredns binary for each
// architecture, in the order given.
type binaries []spec

func (b *binaries) String() string { return fmt.Sprint(*b) }

func (b *binaries) Set(v string) error {
	arch, path, ok := strings.Cut(v, "=")
	if !ok || arch == "" || path == "" {
		return fmt.Errorf("want ARCH=PATH (GOARCH and the binary built for it), got %q", v)
	}
	*b = append(*b, spec{arch: arch, binary: path})
	return nil
}

func main() {
	var specs binaries
	flag.Var(&specs, "binary", "ARCH=PATH: a static coredns binary built for GOARCH ARCH (required; repeat it for a multi-arch image)")
	caBundle := flag.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to include; empty for none")
	out := flag.String("o", "coredns-serviceentry.oci.tar", "OCI archive to write")
	entrypoint := flag.String("entrypoint", "/coredns", "where the binary goes in the image, a file of its root: the entrypoint")
	title := flag.String("title", "coredns-serviceentry", "the image's org.opencontainers.image.title label")
	ref := flag.String("tag", "coredns-serviceentry:dev", "image name recorded in the archive")
	flag.Parse()
	if len(specs) == 0 {
		log.Fatal("-binary is required")
	}
	name, ok := strings.CutPrefix(*entrypoint, "/")
	if !ok || name == "" || strings.Contains(name, "/") {
		log.Fatalf("-entrypoint %q: want a file of the image's root, /NAME", *entrypoint)
	}
	created := sourceDate()
	images := make([]v1.Image, len(specs))
	for i, s := range specs {
		s.caBundle, s.created, s.name, s.title = *caBundle, created, name, *title
		img, err := build(s)
		if err != nil {
			log.Fatalf("%s: %v", s.arch, err)
		}
		images[i] = img
	}

	// One architecture is one image, as a registry serves it; several are
	// an image index of one image per platform, which a runtime picks from.
	var top interface{ Digest() (v1.Hash, error) } = images[0]
	add := func(p layout.Path, annotations layout.Option) error { return p.AppendImage(images[0], annotations) }
	if len(images) > 1 {
		idx, err := multiArch(specs, images)
		if err != nil {
			log.Fatal(err)
		}
		top = idx
		add = func(p layout.Path, annotations layout.Option) error { return p.AppendIndex(idx, annotations) }
	}
	if err := writeArchive(add, *ref, *out); err != nil {
		log.Fatal(err)
	}
	digest, err := top.Digest()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s %s %s\n", *out, *ref, digest)
}

// multiArch is the OCI image index of images, each under the platform of its
// spec, in order.
func multiArch(specs []spec, images []v1.Image) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, img := range images {
		for _, earlier := range specs[:i] {
			if earlier.arch == specs[i].arch {
				return nil, fmt.Errorf("two binaries for %s", specs[i].arch)
			}
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: specs[i].arch}}})
	}
	return idx, nil
}

// sourceDate honours SOURCE_DATE_EPOCH (reproducible-builds.org); the Unix
// epoch otherwise, so that the same inputs always give the same digest.
func sourceDate() time.Time {
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		if sec, err := strconv.ParseInt(v, 10, 64); err == nil {
			return time.Unix(sec, 0).UTC()
		}
		log.Fatalf("SOURCE_DATE_EPOCH=%q is not a number of seconds", v)
	}
	return time.Unix(0, 0).UTC()
}

// build assembles the image: config first (an empty base has none), then the
// one layer, whose diff ID mutate records in the config's rootfs.
func build(s spec) (v1.Image, error) {
	layer, err := rootLayer(s)
	if err != nil {
		return nil, err
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	user := fmt.Sprintf("%d:%d", nonroot, nonroot)
	img, err := mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: s.arch,
		OS:           "linux",
		Created:      v1.Time{Time: s.created},
		Config: v1.Config{
			Entrypoint:   []string{"/" + s.name},
			User:         user,
			WorkingDir:   "/",
			ExposedPorts: map[string]struct{}{"53/tcp": {}, "53/udp": {}, "9153/tcp": {}},
			Env:          []string{"PATH=/"},
			Labels: map[string]string{
				"org.opencontainers.image.title":  s.title,
				"org.opencontainers.image.source": "https://github.com/coredns-serviceentry/serviceentry",
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: s.created}, CreatedBy: "tools/image", Comment: s.title},
	})
}

// rootLayer is the image's whole file system.
func rootLayer(s spec) (v1.Layer, error) {
	binary, err := os.ReadFile(s.binary)
	if err != nil {
		return nil, fmt.Errorf("reading the binary: %w", err)
	}
	var ca []byte
	if s.caBundle != "" {
		if ca, err = os.ReadFile(s.caBundle); err != nil {
			return nil, fmt.Errorf("reading the CA bundle (-ca-certificates \"\" to leave it out): %w", err)
		}
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: s.created, Format: tar.FormatPAX})
	}
	file := func(h *tar.Header, data []byte) error {
		h.Typeflag, h.Size, h.ModTime, h.Format = tar.TypeReg, int64(len(data)), s.created, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	steps := []func() error{
		func() error { return dir("etc", 0o755) },
		func() error {
			return file(&tar.Header{Name: "etc/passwd", Mode: 0o644},
				fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonroot, nonroot))
		},
		func() error {
			return file(&tar.Header{Name: "etc/group", Mode: 0o644}, fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", nonroot))
		},
		func() error { return dir("home", 0o755) },
		func() error {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "home/nonroot/", Mode: 0o700,
				Uid: nonroot, Gid: nonroot, ModTime: s.created, Format: tar.FormatPAX})
		},
		func() error { return dir("tmp", 0o1777) },
		func() error {
			return file(&tar.Header{Name: s.name, Mode: 0o755,
				PAXRecords: map[string]string{"SCHILY.xattr.security.capability": string(capNetBindService)}}, binary)
		},
	}
	if ca != nil {
		steps = append(steps,
			func() error { return dir("etc/ssl", 0o755) },
			func() error { return dir("etc/ssl/certs", 0o755) },
			func() error { return file(&tar.Header{Name: "etc/ssl/certs/ca-certificates.crt", Mode: 0o644}, ca) })
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, fmt.Errorf("writing the layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("writing the layer: %w", err)
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// writeArchive writes an OCI image layout whose one entry add appends (an
// image or an index), named ref, packed in one tar.
func writeArchive(add func(layout.Path, layout.Option) error, ref, out string) error {
	dir, err := os.MkdirTemp("", "oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("OCI layout: %w", err)
	}
	if err := add(p, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		return fmt.Errorf("OCI layout: %w", err)
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if d.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
			return tw.WriteHeader(h)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if cerr := tw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return nil
}
