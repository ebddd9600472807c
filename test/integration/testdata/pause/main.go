// Command pause is the pod sandbox's process in TestNodeRollout's cluster,
// which has no registry to pull a pause image from: it holds the pod's
// namespaces open and does nothing until the runtime stops it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
