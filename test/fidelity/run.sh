#!/usr/bin/env bash
# Runs the differential test against Istio's own DNS code. The compiled test
# binary is cached like test/servers/build.sh caches the servers: under
# ~/.cache/serviceentry, keyed by the Go version and a hash of this module's
# go.mod, go.sum and sources, so only the first run on a machine (or after a
# change here) compiles Istio's packages (minutes cold; Go's build cache helps
# too). The plugin's cmd/coredns is built from source on every run, here, and
# handed to the test in SERVICEENTRY_COREDNS.
# Arguments go to the test binary, e.g. test/fidelity/run.sh -test.run 'seed=17/'.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

key=$(cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)
cache="${SERVICEENTRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serviceentry}/fidelity"
bin="$cache/fidelity-$(go env GOVERSION)-$key.test"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "building the fidelity test (istio.io/istio $(go list -m -f '{{.Version}}' istio.io/istio)) into $bin" >&2
  go test -c -o "$bin.tmp" .
  find "$cache" -name 'fidelity-*.test' -delete # older versions
  mv "$bin.tmp" "$bin"
fi
coredns_dir=$(mktemp -d)
trap 'rm -rf "$coredns_dir"' EXIT
(cd ../.. && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$coredns_dir/coredns" ./cmd/coredns)
SERVICEENTRY_COREDNS="$coredns_dir/coredns" "$bin" -test.count=1 -test.v -test.timeout 30m "$@"
