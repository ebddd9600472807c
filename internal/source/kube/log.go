package kube

import clog "github.com/coredns/coredns/plugin/pkg/log"

// log names this package, so that a line says which source wrote it.
var log = clog.NewWithPlugin("serviceentry/kube")
