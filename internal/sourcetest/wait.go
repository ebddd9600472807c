package sourcetest

import (
	"testing"
	"time"
)

// EventuallyTimeout bounds Eventually. Sources promise about a second; the
// bound is ten times that so that a loaded 2-core machine under -race does
// not fail a test that is only slow. A failure still names what was awaited.
const EventuallyTimeout = 10 * time.Second

// Eventually polls cond until it holds or EventuallyTimeout passes.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	EventuallyWithin(t, EventuallyTimeout, what, cond)
}

// EventuallyWithin polls cond until it holds or timeout passes.
func EventuallyWithin(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	began := time.Now()
	for !cond() {
		if time.Since(began) > timeout {
			t.Fatalf("%s: still not the case after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
