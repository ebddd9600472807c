package entry

import (
	"slices"
	"strings"

	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	clientv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
)

// Group is the API group of ServiceEntries, as Istio's client names it.
var Group = clientv1.SchemeGroupVersion.Group

// ServedVersions are the ServiceEntry API versions we can read, newest first:
// v1 from Istio 1.22, v1beta1 and v1alpha3 before. All share one schema.
var ServedVersions = []string{clientv1.SchemeGroupVersion.Version, clientv1beta1.SchemeGroupVersion.Version, clientv1alpha3.SchemeGroupVersion.Version}

// ReasonInvalidObject: a ServiceEntry that Istio's own decoder would refuse
// whole (a resolution this build does not know), a value of the "reason"
// label of coredns_serviceentry_skipped_items_total.
const ReasonInvalidObject = "invalid_object"

// IsServiceEntryVersion reports whether apiVersion is one of ServedVersions
// of Group.
func IsServiceEntryVersion(apiVersion string) bool {
	group, version, ok := strings.Cut(apiVersion, "/")
	return ok && group == Group && slices.Contains(ServedVersions, version)
}
