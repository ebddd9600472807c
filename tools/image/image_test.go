package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestImageArchive runs scripts/image as a user would, twice, and checks the
// archive: OCI layout, the image's config (entrypoint, nonroot user, ports),
// its files (binary with the bind capability, nonroot user, CA bundle) and
// that the binary inside is our CoreDNS; and that the digest is reproducible.
func TestImageArchive(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first.tar"), filepath.Join(dir, "second.tar")
	for _, out := range []string{first, second} {
		cmd := exec.Command("../../scripts/image", out, "example.org/coredns-serviceentry:test")
		if output, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("scripts/image: %v\n%s", err, output)
		}
	}

	img := openArchive(t, first, "example.org/coredns-serviceentry:test")
	again := openArchive(t, second, "example.org/coredns-serviceentry:test")
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("two builds of the same tree differ: %s, %s", d1, d2)
	}

	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture == "" {
		t.Errorf("platform %s/%s", cfg.OS, cfg.Architecture)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/coredns"}) {
		t.Errorf("entrypoint %q", cfg.Config.Entrypoint)
	}
	if cfg.Config.User != "65532:65532" {
		t.Errorf("user %q, want the numeric nonroot user", cfg.Config.User)
	}
	for _, port := range []string{"53/udp", "53/tcp", "9153/tcp"} {
		if _, ok := cfg.Config.ExposedPorts[port]; !ok {
			t.Errorf("port %s not exposed (%v)", port, cfg.Config.ExposedPorts)
		}
	}

	files := layerFiles(t, img)
	bin, ok := files["coredns"]
	if !ok {
		t.Fatalf("no /coredns in the image; files: %v", keys(files))
	}
	if bin.header.Mode&0o111 == 0 || bin.header.Uid != 0 {
		t.Errorf("/coredns mode %o uid %d", bin.header.Mode, bin.header.Uid)
	}
	if got := bin.header.PAXRecords["SCHILY.xattr.security.capability"]; got != string(capNetBindService) {
		t.Errorf("/coredns lacks cap_net_bind_service=+ep (xattr %x)", got)
	}
	if !strings.Contains(string(files["etc/passwd"].data), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd: %q", files["etc/passwd"].data)
	}
	if tmp := files["tmp/"]; tmp == nil || tmp.header.Mode != 0o1777 {
		t.Error("/tmp missing or not world-writable with the sticky bit")
	}
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil && len(files["etc/ssl/certs/ca-certificates.crt"].data) == 0 {
		t.Error("CA bundle not included")
	}

	// The binary inside is a static CoreDNS with our plugin in the chain.
	path := filepath.Join(dir, "coredns")
	if err := os.WriteFile(path, bin.data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, "-plugins").CombinedOutput()
	if err != nil {
		t.Fatalf("coredns -plugins: %v\n%s", err, out)
	}
	plugins := strings.Fields(string(out))
	if !slices.Contains(plugins, "serviceentry") || !slices.Contains(plugins, "kubernetes") {
		t.Errorf("coredns -plugins does not list serviceentry and kubernetes:\n%s", out)
	}
	if out, err := exec.Command("ldd", path).CombinedOutput(); err == nil {
		t.Errorf("the binary is dynamically linked; the image has no libc:\n%s", out)
	}
}

// openArchive unpacks an OCI archive and returns the image named ref.
func openArchive(t *testing.T, archive, ref string) v1.Image {
	t.Helper()
	index, top := openLayout(t, archive, ref)
	img, err := index.Image(top.Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// openLayout unpacks an OCI archive and returns its layout's index and the
// one entry of it, which must be named ref.
func openLayout(t *testing.T, archive, ref string) (v1.ImageIndex, v1.Descriptor) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(target, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("not an OCI layout: %v", err)
	}
	index, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := index.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(manifest.Manifests) != 1 || manifest.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != ref {
		t.Fatalf("index: %+v", manifest.Manifests)
	}
	return index, manifest.Manifests[0]
}

type layerFile struct {
	header *tar.Header
	data   []byte
}

func layerFiles(t *testing.T, img v1.Image) map[string]*layerFile {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("want one layer: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := make(map[string]*layerFile)
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, tr); err != nil {
			t.Fatal(err)
		}
		files[h.Name] = &layerFile{header: h, data: buf.Bytes()}
	}
}

func keys(m map[string]*layerFile) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestImageForAnotherArchitecture: GOARCH picks the image's architecture,
// and the binary inside is a Linux executable for it, whatever the build
// machine runs.
func TestImageForAnotherArchitecture(t *testing.T) {
	out := filepath.Join(t.TempDir(), "arm64.tar")
	cmd := exec.Command("../../scripts/image", out, "example.org/coredns-serviceentry:arm64")
	cmd.Env = append(os.Environ(), "GOARCH=arm64")
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("GOARCH=arm64 scripts/image: %v\n%s", err, output)
	}
	checkPlatform(t, openArchive(t, out, "example.org/coredns-serviceentry:arm64"), "arm64", elf.EM_AARCH64)
}

// checkPlatform checks that img is configured for linux/arch and holds a
// Linux executable for machine.
func checkPlatform(t *testing.T, img v1.Image, arch string, machine elf.Machine) {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != arch {
		t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, arch)
	}
	bin, err := elf.NewFile(bytes.NewReader(layerFiles(t, img)["coredns"].data))
	if err != nil {
		t.Fatalf("%s: /coredns is not an ELF executable: %v", arch, err)
	}
	if bin.Machine != machine || bin.OSABI != elf.ELFOSABI_NONE {
		t.Errorf("%s: /coredns is for %v (OS ABI %v), want %v for Linux", arch, bin.Machine, bin.OSABI, machine)
	}
}

// TestMultiArchImage: GOARCH="amd64 arm64" builds one archive holding an OCI
// image index named by the tag, with one image per architecture under its
// platform, each holding a Linux binary for that architecture; built twice,
// the index's digest is the same.
func TestMultiArchImage(t *testing.T) {
	dir := t.TempDir()
	const ref = "example.org/coredns-serviceentry:multi"
	var digests []v1.Hash
	for _, out := range []string{filepath.Join(dir, "first.tar"), filepath.Join(dir, "second.tar")} {
		cmd := exec.Command("../../scripts/image", out, ref)
		cmd.Env = append(os.Environ(), "GOARCH=amd64 arm64")
		if output, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf(`GOARCH="amd64 arm64" scripts/image: %v\n%s`, err, output)
		}
		layoutIndex, top := openLayout(t, out, ref)
		digests = append(digests, top.Digest)
		if top.MediaType != types.OCIImageIndex {
			t.Fatalf("the archive's entry is a %s, want an image index", top.MediaType)
		}
		multi, err := layoutIndex.ImageIndex(top.Digest)
		if err != nil {
			t.Fatal(err)
		}
		manifest, err := multi.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
		if len(manifest.Manifests) != len(machines) {
			t.Fatalf("%d images in the index, want %d", len(manifest.Manifests), len(machines))
		}
		for _, m := range manifest.Manifests {
			if m.Platform == nil || m.Platform.OS != "linux" || machines[m.Platform.Architecture] == elf.EM_NONE {
				t.Fatalf("an image for platform %+v", m.Platform)
			}
			img, err := multi.Image(m.Digest)
			if err != nil {
				t.Fatal(err)
			}
			checkPlatform(t, img, m.Platform.Architecture, machines[m.Platform.Architecture])
		}
	}
	if digests[0] != digests[1] {
		t.Errorf("two builds of the same tree differ: %s, %s", digests[0], digests[1])
	}
}

// TestOtherEntrypoint: -entrypoint and -title package another binary the
// same way (the integration tests' pause image): the file and the
// entrypoint are its, and no /coredns is left in the image.
func TestOtherEntrypoint(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "pause")
	if err := os.WriteFile(bin, []byte("not really a binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := build(spec{binary: bin, name: "pause", title: "pause", arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/pause"}) || cfg.Config.Labels["org.opencontainers.image.title"] != "pause" {
		t.Errorf("entrypoint %q, title %q", cfg.Config.Entrypoint, cfg.Config.Labels["org.opencontainers.image.title"])
	}
	files := layerFiles(t, img)
	if f := files["pause"]; f == nil || string(f.data) != "not really a binary" || f.header.Mode&0o111 == 0 {
		t.Errorf("/pause is missing or not the binary: %v", f)
	}
	if _, ok := files["coredns"]; ok {
		t.Error("/coredns is in an image whose entrypoint is /pause")
	}
}
