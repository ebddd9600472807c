package serviceentry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// manifestPollInterval is how often files are checked for changes. Polling
// (rather than inotify) also sees Kubernetes ConfigMap volumes, which swap a
// symlink, and keeps a change served within a second.
const manifestPollInterval = 500 * time.Millisecond

// manifestSource reads ServiceEntries from YAML or JSON files and folders and
// keeps the store in step with them.
type manifestSource struct {
	paths []string
	opts  convertOptions
	store *store

	files map[string]*manifestFile // by path; only touched by the reading goroutine

	// poll is how often files are checked; publish hands the store a new
	// set of entries (the store's replaceAll). Tests change both before start.
	poll    time.Duration
	publish func(map[string]*entry)

	done chan struct{}
	wg   sync.WaitGroup
}

// manifestFile is the last good read of one file.
type manifestFile struct {
	stamp   fileStamp
	entries []*entry
}

// fileStamp tells whether a file changed since it was read.
type fileStamp struct {
	size    int64
	modTime time.Time
}

func newManifestSource(paths []string, opts convertOptions, st *store) *manifestSource {
	return &manifestSource{paths: paths, opts: opts, store: st, files: make(map[string]*manifestFile),
		poll: manifestPollInterval, publish: st.replaceAll}
}

func (m *manifestSource) start() error {
	for _, p := range m.paths {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("manifests: %w", err)
		}
	}
	m.refresh()
	m.store.markSynced()
	m.done = make(chan struct{})
	m.wg.Add(1)
	go m.watch()
	return nil
}

func (m *manifestSource) stop() {
	if m.done == nil {
		return
	}
	close(m.done)
	m.wg.Wait()
	m.done = nil
}

func (m *manifestSource) watch() {
	defer m.wg.Done()
	tick := time.NewTicker(m.poll)
	defer tick.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-tick.C:
			m.refresh()
		}
	}
}

// refresh reads the files that changed and hands the store the union of every
// file's entries. A file that can no longer be read or parsed keeps its last
// good entries, so nothing already served is lost to a bad edit.
func (m *manifestSource) refresh() {
	present := m.listFiles()
	changed := false
	for path := range m.files {
		if _, ok := present[path]; !ok {
			delete(m.files, path)
			changed = true
		}
	}
	for path, stamp := range present {
		old := m.files[path]
		if old != nil && old.stamp == stamp {
			continue
		}
		changed = true
		entries, err := m.readFile(path)
		if err != nil {
			reason := reasonInvalidManifest
			if errors.Is(err, errManifestTooLarge) {
				reason = reasonManifestTooLarge
			}
			skippedItems.WithLabelValues(reason).Inc()
			if old != nil {
				log.Errorf("manifests: %v; keeping its last good content", err)
				old.stamp = stamp // report once per change, not on every poll
				continue
			}
			log.Errorf("manifests: %v", err)
		}
		m.files[path] = &manifestFile{stamp: stamp, entries: entries}
	}
	if !changed {
		return
	}
	m.publish(m.merge())
}

// merge combines the files' entries. Should two files define the same
// namespace/name, the one whose path sorts last wins, whatever the read order.
func (m *manifestSource) merge() map[string]*entry {
	paths := make([]string, 0, len(m.files))
	for p := range m.files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	merged := make(map[string]*entry)
	for _, p := range paths {
		for _, e := range m.files[p].entries {
			if _, dup := merged[e.key]; dup {
				log.Warningf("manifests: ServiceEntry %s is defined more than once; the one in %s wins", e.key, p)
			}
			merged[e.key] = e
		}
	}
	return merged
}

// listFiles returns every manifest file under the configured paths with its
// stamp. Folders are read one level deep for *.yaml, *.yml and *.json, leaving
// out hidden names (a ConfigMap volume's ..data and its timestamped folders).
func (m *manifestSource) listFiles() map[string]fileStamp {
	out := make(map[string]fileStamp)
	for _, p := range m.paths {
		info, err := os.Stat(p)
		if err != nil {
			log.Errorf("manifests: %v", err)
			continue
		}
		if !info.IsDir() {
			out[p] = fileStamp{size: info.Size(), modTime: info.ModTime()}
			continue
		}
		dirents, err := os.ReadDir(p)
		if err != nil {
			log.Errorf("manifests: %v", err)
			continue
		}
		for _, d := range dirents {
			name := d.Name()
			if strings.HasPrefix(name, ".") || !isManifestName(name) {
				continue
			}
			path := filepath.Join(p, name)
			fi, err := os.Stat(path) // follows symlinks, as ConfigMap volumes need
			if err != nil || fi.IsDir() {
				continue
			}
			out[path] = fileStamp{size: fi.Size(), modTime: fi.ModTime()}
		}
	}
	return out
}

func isManifestName(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// maxManifestBytes bounds one manifest file. A ServiceEntry is at most the
// API server's 1.5 MiB object limit and a typical one a few hundred bytes, so
// 64 MiB holds a couple of hundred thousand entries; anything larger is
// refused whole (its last good content stays served) rather than decoded.
const maxManifestBytes = 64 << 20

var errManifestTooLarge = fmt.Errorf("larger than the %d MiB limit for one manifest file: not read", maxManifestBytes>>20)

func (m *manifestSource) readFile(path string) ([]*entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Read one byte past the limit rather than trusting a size taken
	// before the read: the file may grow in between.
	data, err := io.ReadAll(io.LimitReader(f, maxManifestBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%s: %w", path, errManifestTooLarge)
	}
	entries, err := parseManifests(data, m.opts)
	if err != nil {
		return entries, fmt.Errorf("%s: %w", path, err)
	}
	return entries, nil
}

// parseManifests decodes a stream of YAML or JSON documents and converts the
// ServiceEntries among them. A document that is not a valid ServiceEntry is
// skipped (logged and counted) and the rest are kept; an error that stops the
// stream itself is returned with the entries read before it.
func parseManifests(data []byte, opts convertOptions) ([]*entry, error) {
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var entries []*entry
	for doc := 1; ; doc++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return entries, nil
			}
			return entries, fmt.Errorf("document %d: %w", doc, err)
		}
		e, err := decodeServiceEntry(raw, opts)
		if err != nil {
			skippedItems.WithLabelValues(reasonInvalidManifest).Inc()
			log.Errorf("manifests: document %d: %v", doc, err)
			continue
		}
		if e != nil {
			entries = append(entries, e)
		}
	}
}

// decodeServiceEntry converts one JSON document. Documents of other kinds give
// nil and no error. All three served versions share one schema.
func decodeServiceEntry(raw json.RawMessage, opts convertOptions) (*entry, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(raw, &tm); err != nil {
		return nil, err
	}
	if tm.Kind != "ServiceEntry" || !isServiceEntryVersion(tm.APIVersion) {
		return nil, nil
	}
	var se clientnetworking.ServiceEntry
	if err := json.Unmarshal(raw, &se); err != nil {
		return nil, fmt.Errorf("ServiceEntry: %w", err)
	}
	if se.Name == "" {
		return nil, errors.New("ServiceEntry without metadata.name")
	}
	e, skips := convert(&se.ObjectMeta, &se.Spec, &se.Status, opts)
	reportSkips(namespacedName(&se.ObjectMeta), skips)
	return e, nil
}

func isServiceEntryVersion(apiVersion string) bool {
	switch apiVersion {
	case "networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3":
		return true
	}
	return false
}

func namespacedName(meta *metav1.ObjectMeta) string {
	ns := meta.Namespace
	if ns == "" {
		ns = "default"
	}
	return ns + "/" + meta.Name
}
