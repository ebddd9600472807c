package manifest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source"
	"github.com/fsnotify/fsnotify"
	"golang.org/x/sync/semaphore"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Timing of the manifests source. A changed file is read once it is stable:
// the same file (identity, size and modification time) at two checks at least
// Settle apart. fsnotify's events trigger the checks; a poll is the
// fallback for what events miss (network filesystems, files symlinked from
// folders nobody watches, a queue overflow), and the only way when fsnotify
// cannot watch (inotify limits).
const (
	Settle                = 200 * time.Millisecond
	manifestPollInterval  = 5 * time.Second        // while fsnotify watches every path
	manifestPollUnwatched = 500 * time.Millisecond // while it does not
)

// Source reads ServiceEntries from YAML or JSON files and folders and
// keeps the sink in step with them.
type Source struct {
	paths []string
	opts  entry.Options
	sink  source.Sink

	// Intervals (see Settle), the sink for new sets of entries (the
	// sink's ReplaceAll) and the watcher's maker; tests change them before
	// start.
	settle        time.Duration
	poll          time.Duration
	pollUnwatched time.Duration
	publish       func(map[entry.Key]*entry.Entry, map[entry.Key]*entry.Workload)
	newWatcher    func() (*fsnotify.Watcher, error)

	// Only touched by start and then by the source's goroutine.
	files   map[string]*manifestFile // by path
	watcher *fsnotify.Watcher        // nil when fsnotify is unavailable
	watched bool                     // the watcher covers every path

	done chan struct{}
	wg   sync.WaitGroup
}

// manifestFile is the last good read of one file and the change, if any,
// that waits to be read.
type manifestFile struct {
	stamp     fileStamp // of the last read
	entries   []*entry.Entry
	workloads []*entry.Workload // with entries, the last good content

	seen    fileStamp // the file as a pending check saw it
	seenAt  time.Time // when; zero when nothing is pending
	touched bool      // an event named the file: read it once stable, even with an equal stamp
	emptyAt time.Time // a read found no entries where there were some; zero if not
	goneAt  time.Time // a check found the file gone; zero if not
}

// fileStamp tells whether a file changed since it was read.
type fileStamp struct {
	size    int64
	modTime time.Time
	info    os.FileInfo // for os.SameFile: a rename or a ConfigMap swap gives another file
}

func stampOf(fi os.FileInfo) fileStamp {
	return fileStamp{size: fi.Size(), modTime: fi.ModTime(), info: fi}
}

func (a fileStamp) equal(b fileStamp) bool {
	if a.info == nil || b.info == nil {
		return a.info == nil && b.info == nil
	}
	return a.size == b.size && a.modTime.Equal(b.modTime) && os.SameFile(a.info, b.info)
}

// New returns a source reading the files and folders at paths into sink.
// Nothing is read until Start.
func New(paths []string, opts entry.Options, sink source.Sink) *Source {
	clean := make([]string, len(paths))
	for i, p := range paths {
		clean[i] = filepath.Clean(p)
	}
	return &Source{paths: clean, opts: opts, sink: sink, files: make(map[string]*manifestFile),
		settle: Settle, poll: manifestPollInterval, pollUnwatched: manifestPollUnwatched,
		publish: sink.ReplaceAll, newWatcher: fsnotify.NewWatcher}
}

// Start reads every file at once, then watches them in the background.
func (m *Source) Start() error {
	for _, p := range m.paths {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("manifests: %w", err)
		}
	}
	// Watch before the first read, so that no change after it is missed.
	if w, err := m.newWatcher(); err != nil {
		log.Warningf("manifests: cannot watch for changes (%v); polling every %v", err, m.pollUnwatched)
	} else {
		m.watcher = w
		m.rewatch()
	}
	m.check(time.Now(), true)
	m.sink.MarkSynced()
	m.done = make(chan struct{})
	m.wg.Add(1)
	go m.run()
	return nil
}

// Stop ends the source's goroutine and closes its watcher (which waits for
// fsnotify's own goroutine).
func (m *Source) Stop() {
	if m.done == nil {
		return
	}
	close(m.done)
	m.wg.Wait()
	m.done = nil
	if m.watcher != nil {
		m.watcher.Close()
		m.watcher = nil
	}
}

// run checks the files on every event (at most one check per settle
// interval, however busy the folder), on every poll, and again a settle
// interval after a check that left a change pending.
func (m *Source) run() {
	defer m.wg.Done()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if m.watcher != nil {
		events, errs = m.watcher.Events, m.watcher.Errors
	}
	tick := time.NewTicker(m.pollEvery())
	defer tick.Stop()
	soon := time.NewTimer(m.settle)
	soon.Stop()
	defer soon.Stop()
	armed := false
	arm := func() {
		if !armed {
			soon.Reset(m.settle)
			armed = true
		}
	}
	check := func() {
		watched := m.watched
		m.rewatch()
		if m.watched != watched {
			tick.Reset(m.pollEvery())
		}
		if m.check(time.Now(), false) {
			arm()
		}
	}
	for {
		select {
		case <-m.done:
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if f := m.files[filepath.Clean(ev.Name)]; f != nil {
				f.touched = true
			}
			arm()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			log.Warningf("manifests: watching for changes: %v; checking every file", err)
			arm()
		case <-soon.C:
			armed = false
			check()
		case <-tick.C:
			check()
		}
	}
}

func (m *Source) pollEvery() time.Duration {
	if m.watched {
		return m.poll
	}
	return m.pollUnwatched
}

// rewatch (re)adds the watches: each folder, and the folder of each file (a
// ConfigMap volume swaps its ..data symlink there). Adding is idempotent, and
// repeating it recovers a folder that was removed and made again.
func (m *Source) rewatch() {
	if m.watcher == nil {
		return
	}
	var failed []string
	for _, p := range m.paths {
		dir := p
		if info, err := os.Stat(p); err == nil && !info.IsDir() {
			dir = filepath.Dir(p)
		}
		if err := m.watcher.Add(dir); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", dir, err))
		}
	}
	watched := len(failed) == 0
	if watched != m.watched {
		if watched {
			log.Infof("manifests: watching every path for changes; polling every %v as a fallback", m.poll)
		} else {
			log.Warningf("manifests: cannot watch %s; polling every %v", strings.Join(failed, ", "), m.pollUnwatched)
		}
	}
	m.watched = watched
}

// check reads the files that changed, several at a time, and hands the store
// the union of every file's entries, once per check. The first check reads
// every file as it is; later ones read a changed file only once it is stable
// (see Settle), and let a file that lost all its entries (emptied, or
// removed) go only when a second look a settle interval later finds it so
// again, so that a file being rewritten in place is not served empty or
// half-written. A file that cannot be read or parsed keeps its last good
// entries, so nothing already served is lost to a bad edit. check reports
// whether a change is pending: the caller checks again a settle interval
// later.
func (m *Source) check(now time.Time, first bool) (pending bool) {
	present := m.listFiles()
	changed := false
	for path, f := range m.files {
		if _, ok := present[path]; ok {
			f.goneAt = time.Time{}
			continue
		}
		if !first && f.holds() {
			if f.goneAt.IsZero() {
				f.goneAt = now
			}
			if now.Sub(f.goneAt) < m.settle {
				pending = true
				continue
			}
		}
		delete(m.files, path)
		changed = changed || f.holds()
	}
	var toRead []string
	for path, stamp := range present {
		f := m.files[path]
		if f == nil {
			f = &manifestFile{}
			m.files[path] = f
		}
		if !first {
			if f.stamp.equal(stamp) && !f.touched && f.emptyAt.IsZero() {
				f.seenAt = time.Time{} // unchanged
				continue
			}
			if f.seenAt.IsZero() || !f.seen.equal(stamp) {
				f.seen, f.seenAt = stamp, now // changed since the last look
				pending = true
				continue
			}
			if now.Sub(f.seenAt) < m.settle {
				pending = true
				continue
			}
		}
		f.seenAt, f.touched = time.Time{}, false
		toRead = append(toRead, path)
	}
	for i, r := range m.readFiles(toRead, present) {
		path := toRead[i]
		took, wait := m.take(m.files[path], present[path], r, now, first)
		changed = changed || took
		pending = pending || wait
	}
	if changed {
		m.publish(m.merge())
	}
	return pending
}

// fileRead is what reading one file gave, and the file's stamp as the read
// found it (no info if that is unknown), which tells whether the file changed
// during the read.
type fileRead struct {
	entries   []*entry.Entry
	workloads []*entry.Workload
	stamp     fileStamp
	err       error
}

// readFiles reads the files at paths, up to GOMAXPROCS at a time: a folder of
// many small files (a ConfigMap volume with a key per ServiceEntry) is read
// in parallel as a large file's documents are. The files read at once hold
// at most MaxFileBytes between them (by their listed sizes), so that
// reading in parallel needs no more memory than the largest file alone.
func (m *Source) readFiles(paths []string, listed map[string]fileStamp) []fileRead {
	reads := make([]fileRead, len(paths))
	slots := make(chan struct{}, goruntime.GOMAXPROCS(0))
	budget := semaphore.NewWeighted(MaxFileBytes)
	var wg sync.WaitGroup
	for i, path := range paths {
		weight := min(max(listed[path].size, 1), MaxFileBytes)
		slots <- struct{}{}
		_ = budget.Acquire(context.Background(), weight) // never fails without a deadline
		wg.Go(func() {
			defer func() { budget.Release(weight); <-slots }()
			r := &reads[i]
			r.entries, r.workloads, r.stamp, r.err = m.readFile(path)
		})
	}
	wg.Wait()
	return reads
}

// take applies the read of file f, which the listing before the read found
// with stamp. It reports whether the file's entries changed, and whether a
// change is pending: the caller checks again a settle interval later.
func (m *Source) take(f *manifestFile, stamp fileStamp, r fileRead, now time.Time, first bool) (changed, pending bool) {
	if !first && r.stamp.info != nil && !r.stamp.equal(stamp) {
		// Written while it was read: wait for it to settle again.
		f.seen, f.seenAt = r.stamp, now
		return false, true
	}
	if r.err != nil {
		reason := ReasonInvalidManifest
		if errors.Is(r.err, errManifestTooLarge) {
			reason = ReasonManifestTooLarge
		}
		m.sink.Rejected(reason)
		if f.stamp.info != nil { // read before
			log.Errorf("manifests: %v; keeping its last good content", r.err)
			f.stamp, f.emptyAt = stamp, time.Time{} // report once per change, not on every check
			return false, false
		}
		log.Errorf("manifests: %v", r.err)
	}
	if !first && len(r.entries) == 0 && len(r.workloads) == 0 && f.holds() && f.emptyAt.IsZero() {
		// No entries where there were some: perhaps truncated by
		// a writer that has not written yet. Look again.
		f.emptyAt = now
		f.seen, f.seenAt = stamp, now
		return false, true
	}
	f.stamp, f.entries, f.workloads, f.emptyAt = stamp, r.entries, r.workloads, time.Time{}
	return true, false
}

// holds reports whether the file's last good content has any object.
func (f *manifestFile) holds() bool { return len(f.entries) > 0 || len(f.workloads) > 0 }

// merge combines the files' entries and workloads. Should two files define
// the same kind and namespace/name, the one whose path sorts last wins,
// whatever the read order.
func (m *Source) merge() (map[entry.Key]*entry.Entry, map[entry.Key]*entry.Workload) {
	paths := make([]string, 0, len(m.files))
	for p := range m.files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	merged := make(map[entry.Key]*entry.Entry)
	for _, p := range paths {
		for _, e := range m.files[p].entries {
			if _, dup := merged[e.Key]; dup {
				log.Warningf("manifests: %s is defined more than once; the one in %s wins", e.Key, p)
			}
			merged[e.Key] = e
		}
	}
	workloads := make(map[entry.Key]*entry.Workload)
	for _, p := range paths {
		for _, w := range m.files[p].workloads {
			if _, dup := workloads[w.Key]; dup {
				log.Warningf("manifests: %s is defined more than once; the one in %s wins", w.Key, p)
			}
			workloads[w.Key] = w
		}
	}
	return merged, workloads
}

// listFiles returns every manifest file under the configured paths with its
// stamp. Folders are read one level deep for *.yaml, *.yml and *.json, leaving
// out hidden names (a ConfigMap volume's ..data and its timestamped folders).
func (m *Source) listFiles() map[string]fileStamp {
	out := make(map[string]fileStamp)
	for _, p := range m.paths {
		info, err := os.Stat(p)
		if err != nil {
			log.Errorf("manifests: %v", err)
			continue
		}
		if !info.IsDir() {
			out[p] = stampOf(info)
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
			out[path] = stampOf(fi)
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

// Reasons a whole manifest or document is skipped, values of the "reason"
// label of coredns_serviceentry_skipped_items_total beside those of entry.go.
const (
	ReasonInvalidManifest  = "invalid_manifest"
	ReasonManifestTooLarge = "manifest_too_large"
)

// MaxFileBytes bounds one manifest file. A ServiceEntry is at most the
// API server's 1.5 MiB object limit and a typical one a few hundred bytes, so
// 64 MiB holds a couple of hundred thousand entries; anything larger is
// refused whole (its last good content stays served) rather than decoded.
const MaxFileBytes = 64 << 20

var errManifestTooLarge = fmt.Errorf("larger than the %d MiB limit for one manifest file: not read", MaxFileBytes>>20)

// readFile reads and parses one file. It also returns the file's stamp as it
// was once read (no info if that is unknown), which tells whether the file
// changed during the read.
func (m *Source) readFile(path string) ([]*entry.Entry, []*entry.Workload, fileStamp, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fileStamp{}, err
	}
	defer f.Close()
	// Read one byte past the limit rather than trusting a size taken
	// before the read: the file may grow in between. The size only sizes
	// the buffer, as os.ReadFile does: growing it from nothing, as
	// io.ReadAll does, copied and cleared a large file many times over.
	var size int64
	if fi, err := f.Stat(); err == nil {
		size = min(fi.Size(), MaxFileBytes)
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxFileBytes+1)); err != nil {
		return nil, nil, fileStamp{}, err
	}
	data := buf.Bytes()
	var read fileStamp
	if fi, err := f.Stat(); err == nil {
		read = stampOf(fi)
	}
	if len(data) > MaxFileBytes {
		return nil, nil, read, fmt.Errorf("%s: %w", path, errManifestTooLarge)
	}
	entries, workloads, err := Parse(path, data, m.opts, m.sink)
	if err != nil {
		return entries, workloads, read, fmt.Errorf("%s: %w", path, err)
	}
	return entries, workloads, read, nil
}

// Reporter is what Parse tells of what it leaves out: Sink's methods.
type Reporter interface {
	Skipped(key string, skips []entry.Skip)
	Rejected(reason string)
}

// Parse decodes a stream of YAML or JSON documents, read from source
// (a file, which its log lines name), and converts the ServiceEntries and
// WorkloadEntries among them, also those among the items of a List. A document that is not a valid
// ServiceEntry is skipped (logged and counted) and the rest are kept; an
// error that stops the stream itself is returned with the entries read before
// it.
//
// Documents are converted on several goroutines (see convertDocuments) but
// reported here in stream order, so that the log, the counts and which of two
// definitions of a name comes last are those of a sequential read.
func Parse(source string, data []byte, opts entry.Options, tally Reporter) ([]*entry.Entry, []*entry.Workload, error) {
	var entries []*entry.Entry
	var workloads []*entry.Workload
	for _, b := range convertDocuments(data, opts) {
		entries, workloads = b.report(source, entries, workloads, tally)
		if b.err != nil {
			return entries, workloads, fmt.Errorf("document %d: %w", b.errDoc, b.err)
		}
	}
	return entries, workloads, nil
}

// manifestGuessSize is how far into a stream YAMLOrJSONDecoder looks to tell
// JSON from YAML.
const manifestGuessSize = 4096

// manifestBatchBytes is about how much of a stream one converting goroutine
// takes at a time: enough documents that handing them over costs little
// beside converting them, few enough that the goroutines finish together.
const manifestBatchBytes = 32 << 10

// manifestBatch is a run of consecutive documents of one stream and, once
// converted, what they gave.
type manifestBatch struct {
	first int      // the number of its first document, from 1
	docs  [][]byte // YAML documents, or JSON ones if json
	json  bool

	items  []manifestItem // what the documents gave, in order
	err    error          // stops the stream at document errDoc, after items
	errDoc int
}

// manifestItem is what one document, or one item of a List, gave: an entry
// or a workload (or nothing, for other kinds) and what its conversion left
// out, or the error that left it out whole.
type manifestItem struct {
	doc      int
	item     int // its number in a List, from 1; 0 outside a List
	entry    *entry.Entry
	workload *entry.Workload
	key      entry.Key
	skips    []entry.Skip
	err      error
}

// convertDocuments splits data into documents on the calling goroutine (this
// is quick) and converts them, the bulk of the work, on GOMAXPROCS
// goroutines, a batch at a time. It returns the batches in stream order, the
// last one holding the error that stopped the stream, if any.
func convertDocuments(data []byte, opts entry.Options) []*manifestBatch {
	workers := goruntime.GOMAXPROCS(0)
	work := make(chan *manifestBatch, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for b := range work {
				b.convert(opts)
			}
		})
	}
	next, isJSON := documentsOf(data)
	var batches []*manifestBatch
	b := &manifestBatch{first: 1, json: isJSON}
	size := 0
	for doc := 1; ; doc++ {
		d, err := next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				b.err, b.errDoc = err, doc
			}
			break
		}
		b.docs = append(b.docs, d)
		if size += len(d); size >= manifestBatchBytes {
			batches = append(batches, b)
			work <- b
			b = &manifestBatch{first: doc + 1, json: isJSON}
			size = 0
		}
	}
	batches = append(batches, b)
	work <- b
	close(work)
	wg.Wait()
	return batches
}

// documentsOf returns a function that returns the documents of data one at
// a time, as apimachinery's YAMLOrJSONDecoder splits them, and io.EOF after
// the last. A YAML stream's documents come as they are, to be converted to
// JSON by the converting goroutines; a stream that starts like JSON is read by
// YAMLOrJSONDecoder itself, which finds where each document ends, and falls
// back to YAML (converting on this goroutine) should the stream not be JSON
// after all. isJSON tells which: the documents are JSON already.
func documentsOf(data []byte) (next func() ([]byte, error), isJSON bool) {
	if _, _, isJSON := utilyaml.GuessJSONStream(bytes.NewReader(data), manifestGuessSize); isJSON {
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), manifestGuessSize)
		return func() ([]byte, error) {
			var raw json.RawMessage
			err := dec.Decode(&raw)
			return raw, err
		}, true
	}
	// What YAMLOrJSONDecoder reads a YAML stream with.
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	return r.Read, false
}

// convert converts the batch's documents, up to the first that is not valid
// YAML: that one stops the stream, so the documents after it do not count.
func (b *manifestBatch) convert(opts entry.Options) {
	var yc yamlConverter
	for i, doc := range b.docs {
		if !b.json {
			var err error
			if doc, err = yc.toJSON(doc); err != nil {
				b.err, b.errDoc = err, b.first+i
				break
			}
		}
		b.items = appendItems(b.items, b.first+i, doc, opts)
	}
	b.docs = nil
}

// toJSON converts one YAML document as YAMLOrJSONDecoder does, with
// sigs.k8s.io/yaml's rules, and fails with the same message: directly when
// the document is in the subset fastJSON takes, else through YAMLToJSON
// (rather than Unmarshal into a json.RawMessage, as the decoder does, which
// gives the same bytes after decoding them once more).
func (c *yamlConverter) toJSON(doc []byte) ([]byte, error) {
	if raw, ok := c.fastJSON(doc); ok {
		return raw, nil
	}
	raw, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("error converting YAML to JSON: %w", err)
	}
	return raw, nil
}

// report logs (naming source, the file: files are read in parallel) and
// counts what the batch's documents left out, and appends their entries and
// workloads.
func (b *manifestBatch) report(source string, entries []*entry.Entry, workloads []*entry.Workload, tally Reporter) ([]*entry.Entry, []*entry.Workload) {
	for _, it := range b.items {
		switch {
		case it.err != nil && it.item > 0:
			tally.Rejected(ReasonInvalidManifest)
			log.Errorf("manifests: %s: document %d, item %d: %v", source, it.doc, it.item, it.err)
		case it.err != nil:
			tally.Rejected(ReasonInvalidManifest)
			log.Errorf("manifests: %s: document %d: %v", source, it.doc, it.err)
		default:
			tally.Skipped(it.key.String(), it.skips)
			if it.entry != nil {
				entries = append(entries, it.entry)
			}
			if it.workload != nil {
				workloads = append(workloads, it.workload)
			}
		}
	}
	return entries, workloads
}

// appendItems converts one JSON document: a ServiceEntry, each item of a
// List, or nothing (other kinds).
func appendItems(items []manifestItem, doc int, raw []byte, opts entry.Options) []manifestItem {
	d := decodeJSONDocument(raw)
	if !d.isList() {
		return append(items, convertItem(doc, 0, d, opts))
	}
	list, err := decodeList(raw)
	if err != nil {
		return append(items, manifestItem{doc: doc, err: err})
	}
	for i, it := range list {
		items = append(items, convertItem(doc, i+1, decodeJSONDocument(it.Raw), opts))
	}
	return items
}

func convertItem(doc, item int, d *jsonDocument, opts entry.Options) manifestItem {
	it := manifestItem{doc: doc, item: item}
	if d.tmErr == nil && d.tm.Kind == "WorkloadEntry" && entry.IsServiceEntryVersion(d.tm.APIVersion) {
		// WorkloadEntries share the ServiceEntries' group and versions.
		it.workload, it.skips, it.err = d.convertWorkload()
		if it.workload != nil {
			it.key = it.workload.Key
		}
		return it
	}
	var key string
	it.entry, key, it.skips, it.err = d.convert(opts)
	it.key = entry.ServiceEntryKey(key)
	return it
}

// jsonDocument is one JSON document decoded once: into the slim struct,
// whose TypeMeta tells what the document is, or, should that fail (a
// document of another kind, or no object at all), into its type alone. Either
// way the type is what decoding the type alone gives: the slim struct holds
// it in the same fields.
type jsonDocument struct {
	raw   []byte
	tm    metav1.TypeMeta
	tmErr error // not a JSON object
	se    entry.ServiceEntry
	seErr error
}

func decodeJSONDocument(raw []byte) *jsonDocument {
	d := &jsonDocument{raw: raw}
	if d.seErr = json.Unmarshal(raw, &d.se); d.seErr == nil {
		d.tm = d.se.TypeMeta
	} else {
		d.tmErr = json.Unmarshal(raw, &d.tm)
	}
	return d
}

// isList tells a kind List document, what kubectl get -o yaml writes. Each
// of its items is read as a document of its own (a List inside a List is not
// read).
func (d *jsonDocument) isList() bool { return d.tmErr == nil && isListType(d.tm) }

func isListType(tm metav1.TypeMeta) bool { return tm.Kind == "List" && tm.APIVersion == "v1" }

func decodeList(raw []byte) ([]runtime.RawExtension, error) {
	var list metav1.List
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("List: %w", err)
	}
	return list.Items, nil
}

func (d *jsonDocument) convert(opts entry.Options) (e *entry.Entry, key string, skips []entry.Skip, err error) {
	if len(d.raw) == 0 || string(d.raw) == "null" {
		return nil, "", nil, nil
	}
	if d.tmErr != nil {
		return nil, "", nil, d.tmErr
	}
	if d.tm.Kind != "ServiceEntry" || !entry.IsServiceEntryVersion(d.tm.APIVersion) {
		return nil, "", nil, nil
	}
	if d.seErr != nil {
		return nil, "", nil, fmt.Errorf("ServiceEntry: %w", d.seErr)
	}
	if d.se.Name == "" {
		return nil, "", nil, errors.New("ServiceEntry without metadata.name")
	}
	e, skips, err = d.se.Entry(opts)
	if err != nil {
		return nil, "", nil, fmt.Errorf("ServiceEntry: %w", err)
	}
	_, k := entry.Identity(&d.se.ObjectMeta)
	return e, k.Name, skips, nil
}

// convertWorkload decodes the document again as a WorkloadEntry: decoded
// as a ServiceEntry it has lost what only a WorkloadEntry has.
func (d *jsonDocument) convertWorkload() (*entry.Workload, []entry.Skip, error) {
	var wle entry.WorkloadEntry
	if err := json.Unmarshal(d.raw, &wle); err != nil {
		return nil, nil, fmt.Errorf("WorkloadEntry: %w", err)
	}
	if wle.Name == "" {
		return nil, nil, errors.New("WorkloadEntry without metadata.name")
	}
	w, skips := wle.Workload()
	return w, skips, nil
}
