package main

import (
	"fmt"
	"slices"
)

// withServiceEntry returns the directive order with "serviceentry" inserted
// right before "cache". Its answers may differ from one client to the next
// (by the class and namespace of the pod asking), and cache keys replies by
// name and type alone: before cache, the plugin's own answers are never
// cached, while every name it passes on still is. rewrite, autopath and acl
// run before it, as before cache; hosts and kubernetes after it. A CoreDNS
// without the cache directive is not one this command is built for: fail
// loudly.
func withServiceEntry(directives []string) []string {
	i := slices.Index(directives, "cache")
	if i < 0 {
		panic(fmt.Sprintf("serviceentry: CoreDNS has no cache directive to go before: %v", directives))
	}
	return slices.Insert(slices.Clone(directives), i, "serviceentry")
}
