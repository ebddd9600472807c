//go:build tools

// Package servers only records, for go.mod, the server commands that
// test/servers/build.sh builds: the API server and etcd every integration test
// runs against, and the kubelet, controller manager and scheduler of the
// single-node cluster that TestNodeRollout runs pods on, with kubeadm, whose
// CoreDNS add-on phase (what "kubeadm upgrade" runs) it runs there.
package servers

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
