package main

import (
	"fmt"
	"slices"
)

// withServiceEntry returns the directive order with "serviceentry" inserted
// right before "kubernetes", so that ServiceEntry hosts are answered first and
// everything else falls through to kubernetes and forward. A CoreDNS without
// the kubernetes directive is not one this command is built for: fail loudly.
func withServiceEntry(directives []string) []string {
	i := slices.Index(directives, "kubernetes")
	if i < 0 {
		panic(fmt.Sprintf("serviceentry: CoreDNS has no kubernetes directive to go before: %v", directives))
	}
	return slices.Insert(slices.Clone(directives), i, "serviceentry")
}
