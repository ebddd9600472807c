package sourcetest

import (
	"runtime"
	"strings"
)

// GoroutineStacks returns the stack of every goroutine, by ID.
func GoroutineStacks() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := make(map[string]string)
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
		stacks[id] = g
	}
	return stacks
}

// Finishing reports whether a goroutine's stack shows it running rather
// than waiting.
func Finishing(stack string) bool {
	header, _, _ := strings.Cut(stack, "\n")
	return strings.Contains(header, "[runnable") || strings.Contains(header, "[running")
}

// GoroutineIDs returns the IDs of every goroutine.
func GoroutineIDs() map[string]bool {
	ids := make(map[string]bool)
	for id := range GoroutineStacks() {
		ids[id] = true
	}
	return ids
}
