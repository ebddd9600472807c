#!/usr/bin/env bash
# Builds kube-apiserver and etcd, and the kubelet, kube-controller-manager and
# kube-scheduler of TestNodeRollout's one-node cluster with the kubeadm it runs
# the CoreDNS add-on phase of, from the versions pinned
# in this module and prints the folder that holds them. The binaries are cached by version (and by
# go.sum, so a change of any pin rebuilds), so only the first run on a machine
# pays the cold build (about 20-30 minutes on 2 cores).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

k8s=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
sum=$(sha256sum go.sum | cut -c1-12)
out="${SERVICEENTRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serviceentry}/servers/k8s-$k8s-etcd-$etcd-$sum"

commands="kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm"
complete=yes
for c in $commands etcd; do
  [ -x "$out/$c" ] || complete=no
done
if [ "$complete" = yes ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out.tmp"
minor=$(echo "$k8s" | cut -d. -f2)
# Without these the server reports v0.0.0-master+$Format:%H$, which clients cannot parse.
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean"
echo "building $commands $k8s and etcd $etcd into $out (cold: 20-30 min)" >&2
for c in $commands; do
  go build -trimpath -ldflags "$ldflags" -o "$out.tmp/$c" "k8s.io/kubernetes/cmd/$c" >&2
done
go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3 >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
