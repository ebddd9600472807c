//go:build tools

// Package servers only records, for go.mod, the two server commands that
// test/servers/build.sh builds.
package servers

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
