package sourcetest

import (
	"runtime"
	"runtime/debug"
)

// LiveHeap is the heap's live bytes after a collection, for the memory
// benchmarks.
func LiveHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// HeapInUse is the heap's spans in use after a collection: the live heap and
// the free room in spans that still hold something live (fragmentation),
// which the resident size pays for too.
func HeapInUse() uint64 {
	var m runtime.MemStats
	debug.FreeOSMemory()
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// LiveObjects is the count of the heap's live objects after a collection:
// what the collector marks, whose work grows with it.
func LiveObjects() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapObjects
}
