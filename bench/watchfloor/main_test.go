package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// The raw readers count what the benchmarks wait for: a floor that counted
// other events, or missed some, would be measured on the wrong number.
func TestRawReadersCount(t *testing.T) {
	frames := func(sizes ...int) string {
		var b bytes.Buffer
		for _, n := range sizes {
			_ = binary.Write(&b, binary.BigEndian, uint32(n))
			b.Write(bytes.Repeat([]byte{'x'}, n))
		}
		return b.String()
	}
	for _, c := range []struct {
		name   string
		read   func(*bufio.Reader, *counter) error
		stream string
		want   int64
	}{
		{"json: only MODIFIED", jsonModified, `{"type":"ADDED","object":{}}` + "\n" +
			`{"type":"MODIFIED","object":{"type":"MODIFIED"}}` + "\n" +
			`{"type":"BOOKMARK","object":{}}` + "\n" +
			`{"type":"MODIFIED","object":{}}` + "\n", 2},
		{"json: a line longer than the buffer", jsonModified,
			`{"type":"MODIFIED","object":{"a":"` + strings.Repeat("y", 100<<10) + `"}}` + "\n", 1},
		{"protobuf: one per frame", protobufFrames, frames(3, 0, 70<<10, 1), 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			var changes counter
			err := c.read(bufio.NewReaderSize(strings.NewReader(c.stream), 64<<10), &changes)
			if err == nil {
				t.Fatal("no error at the end of the stream")
			}
			if got := changes.n.Load(); got != c.want {
				t.Errorf("counted %d changes, want %d", got, c.want)
			}
		})
	}
}
