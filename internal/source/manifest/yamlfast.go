package manifest

import (
	"bytes"
	"slices"
)

// yamlConverter converts YAML documents to JSON with sigs.k8s.io/yaml's
// rules (go-yaml v2's YAML 1.1 reading, then encoding/json). Going through
// go-yaml's generic tree costs most of a YAML manifest's reading time, so a
// document written in the plain block style that kubectl, Helm and people
// write is converted directly: block mappings with plain keys, block
// sequences, and one-line scalars whose YAML 1.1 reading is unambiguous.
// Anything else (flow style, anchors, tags, block scalars, multi-line or
// escaped scalars, numbers other than plain decimals, non-ASCII bytes,
// syntax errors) is left to sigs.k8s.io/yaml, so that its output and its
// error messages stay the reference. The two are compared byte for byte by
// TestYAMLFastMatchesSigsYAML and FuzzYAMLFastMatchesSigsYAML.
//
// A converter holds buffers reused from one document to the next; it is not
// safe for concurrent use.
type yamlConverter struct {
	lines []yamlLine
	nodes []yamlNode
	order []int32 // a mapping's children being sorted, as a stack
}

// yamlLine is one line that holds content: its indentation and its text
// after that, without trailing spaces.
type yamlLine struct {
	indent int
	text   []byte
}

type yamlKind uint8

const (
	yamlNull yamlKind = iota
	yamlLiteral
	yamlString
	yamlQuoted // single-quoted: '' stands for '
	yamlMapping
	yamlSequence
)

// yamlNode is a node of the document's tree. Children are linked in
// document order; a mapping's children carry their key.
type yamlNode struct {
	kind        yamlKind
	key         []byte
	value       []byte // a scalar's text (a literal's is its JSON)
	first, last int32  // children, -1 for none
	next        int32  // the next sibling, -1 for none
}

// maxYAMLDepth bounds the nesting the direct path takes; deeper documents
// (nothing a ServiceEntry needs) go to go-yaml, which has limits of its own.
const maxYAMLDepth = 64

// maxYAMLKey stays under go-yaml's limit for a simple key (the ':' within
// 1024 bytes of the key's start): a longer key is an error there.
const maxYAMLKey = 1000

// fastJSON converts doc to JSON if doc is in the subset described at
// yamlConverter; ok is false otherwise.
func (c *yamlConverter) fastJSON(doc []byte) (json []byte, ok bool) {
	if !c.splitLines(doc) {
		return nil, false
	}
	c.nodes = c.nodes[:0]
	if len(c.lines) == 0 {
		return []byte("null"), true // only comments and blank lines
	}
	root, next, ok := c.node(0, 0)
	if !ok || next != len(c.lines) {
		return nil, false
	}
	return c.appendJSON(make([]byte, 0, len(doc)), root), true
}

// splitLines fills c.lines with doc's lines that hold content, leaving out
// blank ones and whole-line comments. It refuses any byte outside printable
// ASCII (tabs, carriage returns, UTF-8 and its byte-order mark among them),
// and lines that begin with a directive or a document marker.
func (c *yamlConverter) splitLines(doc []byte) bool {
	c.lines = c.lines[:0]
	for len(doc) > 0 {
		line := doc
		if i := bytes.IndexByte(doc, '\n'); i >= 0 {
			line, doc = doc[:i], doc[i+1:]
		} else {
			doc = nil
		}
		indent := 0
		for indent < len(line) && line[indent] == ' ' {
			indent++
		}
		text := line[indent:]
		for _, b := range text {
			if b < 0x20 || b > 0x7e {
				return false
			}
		}
		for len(text) > 0 && text[len(text)-1] == ' ' {
			text = text[:len(text)-1]
		}
		if len(text) == 0 || text[0] == '#' {
			continue
		}
		if indent == 0 && (text[0] == '%' || bytes.HasPrefix(text, []byte("---")) || bytes.HasPrefix(text, []byte("..."))) {
			return false
		}
		c.lines = append(c.lines, yamlLine{indent: indent, text: text})
	}
	return true
}

func (c *yamlConverter) newNode(kind yamlKind, value []byte) int32 {
	c.nodes = append(c.nodes, yamlNode{kind: kind, value: value, first: -1, last: -1, next: -1})
	return int32(len(c.nodes) - 1)
}

func (c *yamlConverter) addChild(parent, child int32) {
	p := &c.nodes[parent]
	if p.last < 0 {
		p.first = child
	} else {
		c.nodes[p.last].next = child
	}
	p.last = child
}

// node reads the node whose first line is c.lines[i], at that line's
// indentation, and returns it with the index of the line after it.
func (c *yamlConverter) node(i, depth int) (n int32, next int, ok bool) {
	if depth > maxYAMLDepth {
		return -1, 0, false
	}
	text := c.lines[i].text
	if isSequenceEntry(text) {
		return c.sequence(i, depth)
	}
	if _, _, isKey := splitKey(text); isKey {
		return c.mapping(i, depth)
	}
	n, ok = c.scalar(text)
	return n, i + 1, ok
}

// sequence reads a block sequence whose entries start at c.lines[i]'s
// indentation.
func (c *yamlConverter) sequence(i, depth int) (n int32, next int, ok bool) {
	col := c.lines[i].indent
	n = c.newNode(yamlSequence, nil)
	for i < len(c.lines) && c.lines[i].indent == col && isSequenceEntry(c.lines[i].text) {
		var child int32
		if child, i, ok = c.nested(i, col, c.lines[i].text[1:], depth, false); !ok {
			return -1, 0, false
		}
		c.addChild(n, child)
	}
	return n, i, true
}

// mapping reads a block mapping whose keys start at c.lines[i]'s
// indentation.
func (c *yamlConverter) mapping(i, depth int) (n int32, next int, ok bool) {
	col := c.lines[i].indent
	n = c.newNode(yamlMapping, nil)
	for i < len(c.lines) && c.lines[i].indent == col {
		key, rest, isKey := splitKey(c.lines[i].text)
		if !isKey {
			return -1, 0, false
		}
		var child int32
		if child, i, ok = c.nested(i, col, rest, depth, true); !ok {
			return -1, 0, false
		}
		c.nodes[child].key = key
		c.addChild(n, child)
	}
	return n, i, true
}

// nested reads the value of the mapping entry or sequence entry on line i
// of a collection at column col: rest, what follows the key's colon or the
// dash on that line, else the lines below that are indented further (a
// mapping's value may also be a sequence at the mapping's own indentation),
// else null. It refuses a value followed by a line indented further than
// col, which would be a multi-line scalar or an error.
func (c *yamlConverter) nested(i, col int, rest []byte, depth int, inMapping bool) (n int32, next int, ok bool) {
	trimmed := bytes.TrimLeft(rest, " ")
	if len(trimmed) > 0 && trimmed[0] != '#' { // a comment needs the space that splitKey or isSequenceEntry saw
		if inMapping {
			n, ok = c.scalar(trimmed)
			next = i + 1
		} else {
			// The rest of the line is a node of its own, at its own column.
			c.lines[i] = yamlLine{indent: col + len(c.lines[i].text) - len(trimmed), text: trimmed}
			n, next, ok = c.node(i, depth+1)
		}
	} else {
		next = i + 1
		switch {
		case next < len(c.lines) && c.lines[next].indent > col:
			n, next, ok = c.node(next, depth+1)
		case inMapping && next < len(c.lines) && c.lines[next].indent == col && isSequenceEntry(c.lines[next].text):
			n, next, ok = c.sequence(next, depth+1)
		default:
			n, ok = c.newNode(yamlNull, nil), true
		}
	}
	if !ok || next < len(c.lines) && c.lines[next].indent > col {
		return -1, 0, false
	}
	return n, next, true
}

// isSequenceEntry tells a line that starts a block sequence entry: a dash
// alone or followed by a space.
func isSequenceEntry(text []byte) bool {
	return text[0] == '-' && (len(text) == 1 || text[1] == ' ')
}

// splitKey splits a line that starts a block mapping entry with a plain key
// into the key and the rest of the line after the colon. Only keys that
// go-yaml reads as the same string are taken: a letter, then letters,
// digits and "_./-", never one of YAML 1.1's booleans or nulls (a key "on" is
// the boolean true, which sigs.k8s.io/yaml writes "true").
func splitKey(text []byte) (key, rest []byte, ok bool) {
	if !isLetter(text[0]) {
		return nil, nil, false
	}
	i := 1
	for i < len(text) && i <= maxYAMLKey && isKeyByte(text[i]) {
		i++
	}
	if i > maxYAMLKey || i == len(text) || text[i] != ':' || i+1 < len(text) && text[i+1] != ' ' {
		return nil, nil, false
	}
	if _, special := yaml11Word(text[:i]); special {
		return nil, nil, false
	}
	return text[:i], text[i+1:], true
}

func isLetter(b byte) bool { return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' }

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

func isKeyByte(b byte) bool {
	return isLetter(b) || isDigit(b) || b == '_' || b == '.' || b == '/' || b == '-'
}

// yaml11Word returns the JSON of a plain scalar that YAML 1.1, as go-yaml
// v2 reads it, takes for a boolean or a null, with special set; special is
// false for any other text.
func yaml11Word(s []byte) (json []byte, special bool) {
	switch string(s) {
	case "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON":
		return jsonTrue, true
	case "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF":
		return jsonFalse, true
	case "~", "null", "Null", "NULL":
		return jsonNull, true
	}
	return nil, false
}

var jsonTrue, jsonFalse, jsonNull = []byte("true"), []byte("false"), []byte("null")

// scalar reads a one-line scalar: quoted without escapes and followed by
// nothing but a comment, or plain. A plain scalar ends at a comment; it is
// taken when it is one of the words yaml11Word lists, or when it starts with
// a letter, a digit, '_' or '/' (no indicator, no alias or tag), holds no
// ": " (a mapping where none may be) and does not end with ':'. Those that
// start with a letter, '_' or '/' are strings to go-yaml; see digitScalar
// for the others.
func (c *yamlConverter) scalar(text []byte) (int32, bool) {
	switch text[0] {
	case '\'', '"':
		q := text[0]
		end := 1
		for end < len(text) {
			if text[end] == '\\' && q == '"' {
				return -1, false
			}
			if text[end] == q {
				if q == '\'' && end+1 < len(text) && text[end+1] == '\'' {
					end += 2
					continue
				}
				break
			}
			end++
		}
		if end == len(text) {
			return -1, false // the string goes on to another line
		}
		after := text[end+1:]
		if len(after) > 0 && (after[0] != ' ' || bytes.TrimLeft(after, " ")[0] != '#') {
			return -1, false
		}
		kind := yamlString
		if q == '\'' {
			kind = yamlQuoted
		}
		return c.newNode(kind, text[1:end]), true
	}
	if i := bytes.Index(text, []byte(" #")); i >= 0 {
		text = bytes.TrimRight(text[:i], " ")
	}
	if json, special := yaml11Word(text); special {
		return c.newNode(yamlLiteral, json), true
	}
	first := text[0]
	if !isLetter(first) && !isDigit(first) && first != '_' && first != '/' ||
		bytes.Contains(text, []byte(": ")) || text[len(text)-1] == ':' {
		return -1, false
	}
	if isDigit(first) {
		return c.digitScalar(text)
	}
	return c.newNode(yamlString, text), true
}

// digitScalar reads a plain scalar that starts with a digit, which go-yaml
// tries as a timestamp, an integer (any base, with underscores) and a float
// before it takes it as a string. Only these are taken: decimals without a
// leading zero that fit an int64, which stay as they are; digits with two
// dots or more (an IPv4 address), which no number syntax accepts; and text
// with a ':' or a '/' and no '-' (an IPv6 address, a CIDR), which no number
// syntax accepts either and no timestamp without a '-' after its year.
func (c *yamlConverter) digitScalar(text []byte) (int32, bool) {
	digitsAndDots, dots := true, 0
	for _, b := range text {
		switch {
		case b == '.':
			dots++
		case !isDigit(b):
			digitsAndDots = false
		}
	}
	switch {
	case digitsAndDots && dots >= 2:
		return c.newNode(yamlString, text), true
	case digitsAndDots && dots == 0 && len(text) <= 18 && (text[0] != '0' || len(text) == 1):
		return c.newNode(yamlLiteral, text), true
	case !digitsAndDots && bytes.IndexByte(text, '-') < 0 && bytes.ContainsAny(text, ":/"):
		return c.newNode(yamlString, text), true
	}
	return -1, false
}

// appendJSON appends node n as encoding/json marshals what go-yaml decodes
// it to: a mapping's keys sorted, the last of equal keys kept, strings
// escaped as json.Marshal does for printable ASCII (HTML's <, > and & as
// \u escapes).
func (c *yamlConverter) appendJSON(dst []byte, n int32) []byte {
	node := &c.nodes[n]
	switch node.kind {
	case yamlNull:
		return append(dst, "null"...)
	case yamlLiteral:
		return append(dst, node.value...)
	case yamlString, yamlQuoted:
		return appendJSONString(dst, node.value, node.kind == yamlQuoted)
	case yamlSequence:
		dst = append(dst, '[')
		for child := node.first; child >= 0; child = c.nodes[child].next {
			if child != node.first {
				dst = append(dst, ',')
			}
			dst = c.appendJSON(dst, child)
		}
		return append(dst, ']')
	}
	start := len(c.order)
	for child := node.first; child >= 0; child = c.nodes[child].next {
		c.order = append(c.order, child)
	}
	slices.SortStableFunc(c.order[start:], func(a, b int32) int { return bytes.Compare(c.nodes[a].key, c.nodes[b].key) })
	end := len(c.order)
	dst = append(dst, '{')
	comma := false
	for i := start; i < end; i++ {
		child := c.order[i] // c.order may have grown: index it afresh
		key := c.nodes[child].key
		if i+1 < end && bytes.Equal(key, c.nodes[c.order[i+1]].key) {
			continue // a later value for the same key replaces it
		}
		if comma {
			dst = append(dst, ',')
		}
		comma = true
		dst = append(dst, '"')
		dst = append(dst, key...) // splitKey's bytes need no escaping
		dst = append(dst, '"', ':')
		dst = c.appendJSON(dst, child)
	}
	c.order = c.order[:start]
	return append(dst, '}')
}

// appendJSONString appends s, printable ASCII, as a JSON string; quoted
// tells a single-quoted YAML scalar, where a doubled quote stands for one.
func appendJSONString(dst, s []byte, quoted bool) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch b := s[i]; b {
		case '"', '\\':
			dst = append(dst, '\\', b)
		case '<':
			dst = append(dst, `\u003c`...)
		case '>':
			dst = append(dst, `\u003e`...)
		case '&':
			dst = append(dst, `\u0026`...)
		case '\'':
			dst = append(dst, b)
			if quoted {
				i++
			}
		default:
			dst = append(dst, b)
		}
	}
	return append(dst, '"')
}
