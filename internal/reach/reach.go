// Package reach decides which addresses of the mesh a client pod can route,
// from the marks Istio itself leaves on the pod.
//
// Istio (from 1.25) writes auto-allocated addresses (240.240.0.0/16,
// 2001:2::/48) into ServiceEntry status. Only some clients can route them:
// istiod builds listeners on those addresses only for a proxy that does DNS
// capture, or for a waypoint (nodeUsesAutoallocatedIPs,
// pilot/pkg/model/service.go), and ztunnel routes them for ambient pods
// (constructServiceEntries,
// pilot/pkg/serviceregistry/kube/controller/ambient/services.go). Declared
// spec.addresses get a listener in every sidecar (Service.GetAddressForProxy,
// same file; one model.Service per host and address, convertServices,
// pilot/pkg/serviceregistry/serviceentry/conversion.go). Every other pod
// connects straight to what it is answered.
//
// So a pod is one of three classes: Mesh, DeclaredOnly or Outside. MarksOf
// reads a pod once and keeps a two-byte summary; Class turns the summary into
// a class. Sources were read at Istio 1.28.10 (commit ff49c1889eba), and
// each function cited here was read again at 1.30.3 and behaves the same;
// docs/reach.md lists every fact and its source.
//
// Classing is conservative: on any doubt a pod gets the lower class, because
// an address a client cannot route fails its connection, while the lower
// class's answers still work for a better-equipped client.
package reach

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Class is what addresses a client can route.
type Class uint8

const (
	Outside      Class = iota // no mesh address: gets what Envoy would connect to
	DeclaredOnly              // spec.addresses only (sidecar without DNS capture)
	Mesh                      // every mesh address, auto-allocated included
)

// String returns the class as a metric label value.
func (c Class) String() string {
	switch c {
	case Outside:
		return "outside"
	case DeclaredOnly:
		return "declared_only"
	case Mesh:
		return "mesh"
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// Marks is the compact summary of a pod's Istio marks: what Class needs, and
// nothing else, so an index of many pods keeps two bytes per pod and a change
// of the mesh config can re-class every pod without reading it again.
type Marks uint16

const (
	// markHostNetwork: the pod shares the node's network namespace. The
	// injector never injects it (injectRequired, pkg/kube/inject/inject.go)
	// and no iptables rule of Istio can capture it.
	markHostNetwork Marks = 1 << iota
	// markAmbient: annotation ambient.istio.io/redirection is "enabled".
	// istio-cni writes it as the last step of adding a pod to ztunnel
	// (meshDataplane.AddPodToMesh, cni/pkg/nodeagent/meshdataplane_linux.go);
	// "pending" means the iptables rules are in but no ztunnel accepted the
	// pod, and anything else means not captured (pkg/config/constants).
	markAmbient
	// markInjected: annotation sidecar.istio.io/status is present; the
	// injector writes it on every pod it injects (getInjectionStatus,
	// pkg/kube/inject/webhook.go). Its presence, not its content, is what
	// Istio checks (podHasSidecar, cni/pkg/util/podutil.go).
	markInjected
	// markProxy: a container named istio-proxy in spec.containers, the
	// classic sidecar.
	markProxy
	// markNative: istio-proxy in spec.initContainers with restartPolicy
	// Always, the native sidecar. It starts before the app's init containers
	// (reorderPod, pkg/kube/inject/webhook.go).
	markNative
	// markInitialized: the pod condition Initialized is True.
	markInitialized
	// markNoCapture: the proxy runs but does not capture the app's outbound
	// traffic: interception mode NONE, DISABLE_ENVOY (proxyless gRPC) or a
	// proxy type other than sidecar (a gateway's "proxy router").
	markNoCapture
	// markDNSOn and markDNSOff: the pod's own marks decide DNS capture (on,
	// or off, which includes "cannot be known"). Neither set: the pod is
	// silent, which is off.
	markDNSOn
	markDNSOff
)

// Class returns the class of a pod with these marks.
//
// The mesh config is never read: for every injected pod the injector already
// rendered the mesh's defaultConfig.proxyMetadata into the istio-proxy
// container's env, and the agent never reads the live ConfigMap (see
// docs/reach.md, "Where DNS capture comes from"). A proxy silent on DNS
// capture that reads a mounted mesh file (legacy gateway charts) counts as
// capturing nothing: the lower class is the safe one.
func (m Marks) Class() Class {
	if m&markHostNetwork != 0 {
		return Outside
	}
	if m.Sidecar() {
		if m&markNoCapture != 0 {
			return Outside
		}
		// A classic sidecar starts after every init container: until then
		// istio-init has not set the rules up, or (istio-cni) traffic is
		// redirected to a proxy that is not running (istio/istio#36453).
		if m&markNative == 0 && m&markInitialized == 0 {
			return Outside
		}
		if m&markDNSOn != 0 {
			return Mesh
		}
		return DeclaredOnly
	}
	// istio-cni never adds a pod with sidecar.istio.io/status to ambient
	// (CompiledEnablementSelectors.Matches, cni/pkg/util/enablement_selector.go).
	if m&markAmbient != 0 && m&markInjected == 0 {
		return Mesh
	}
	return Outside
}

// Sidecar reports whether the pod runs an injected istio-proxy. Such a
// pod's own Envoy, and its agent forwarding names it cannot answer, ask
// cluster DNS from the pod's address as its app does: Envoy resolves the
// endpoint hosts of DNS and DNS_ROUND_ROBIN entries (and the entry's own host
// when it has no endpoints) and connects to the answer without capture, so
// such names must get real answers whatever the class.
func (m Marks) Sidecar() bool {
	return m&markInjected != 0 && m&(markProxy|markNative) != 0
}

// String lists the marks set, for logs and test failures.
func (m Marks) String() string {
	names := [...]string{"host_network", "ambient", "injected", "proxy", "native", "initialized",
		"no_capture", "dns_on", "dns_off"}
	var b strings.Builder
	for i, n := range names {
		if m&(1<<i) == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('|')
		}
		b.WriteString(n)
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// Problem is one odd mark, reported per pod when it first appears.
type Problem struct {
	Reason string // a metric label value: one of the Reason constants
	Item   string // the offending mark, as name=value (value cut to 64 bytes)
}

// Reasons of problems: values of the "reason" label of
// coredns_serviceentry_skipped_items_total.
const (
	// ReasonSidecarStatus: sidecar.istio.io/status is not JSON, or the pod
	// lacks the istio-proxy it says it has, or istio-proxy is an init
	// container that is not a native sidecar.
	ReasonSidecarStatus = "pod_sidecar_status"
	// ReasonProxyConfig: the proxy.istio.io/config annotation or the
	// PROXY_CONFIG env is not valid YAML of a ProxyConfig's proxyMetadata.
	ReasonProxyConfig = "pod_proxy_config"
	// ReasonProxyEnv: DNS capture in istio-proxy's env is not a boolean, or
	// cannot be read from the pod (valueFrom, envFrom).
	ReasonProxyEnv = "pod_proxy_env"
	// ReasonAmbientRedirection: ambient.istio.io/redirection has a value
	// istio-cni never writes, or is "enabled" on an injected pod.
	ReasonAmbientRedirection = "pod_ambient_redirection"
)

// Names Istio uses (istio.io/api annotation package; pkg/kube/inject).
const (
	annSidecarStatus = "sidecar.istio.io/status"
	annRedirection   = "ambient.istio.io/redirection"
	annProxyConfig   = "proxy.istio.io/config"
	annInterception  = "sidecar.istio.io/interceptionMode"

	proxyName     = "istio-proxy"
	envDNSCapture = "ISTIO_META_DNS_CAPTURE"
	envMetaJSON   = "ISTIO_METAJSON_"
	envProxyConf  = "PROXY_CONFIG"
	envDisable    = "DISABLE_ENVOY"
	envIntercept  = "ISTIO_META_INTERCEPTION_MODE"

	// defaultMeshFile is pilot-agent's --meshConfig default
	// ("./etc/istio/config/mesh", pilot/cmd/pilot-agent/app/cmd.go) from the
	// proxy image's WORKDIR / (pilot/docker/Dockerfile.proxyv2).
	defaultMeshFile = "/etc/istio/config/mesh"
)

// MarksOf summarizes the Istio marks of pod and reports the odd ones. It
// never fails: an odd mark is reported and the pod classed safely.
func MarksOf(pod *corev1.Pod) (Marks, []Problem) {
	if pod == nil {
		return 0, nil
	}
	if pod.Spec.HostNetwork {
		return markHostNetwork, nil
	}
	var (
		m     Marks
		probs []Problem
	)
	ann := pod.Annotations
	status, injected := ann[annSidecarStatus]
	if injected {
		m |= markInjected
		if !isJSONObject(status) {
			probs = append(probs, problem(ReasonSidecarStatus, annSidecarStatus, status))
		}
	}
	if v, ok := ann[annRedirection]; ok {
		switch {
		case v == "enabled" && injected:
			probs = append(probs, problem(ReasonAmbientRedirection, annRedirection, v+" on an injected pod"))
		case v == "enabled":
			m |= markAmbient
		case v != "pending":
			probs = append(probs, problem(ReasonAmbientRedirection, annRedirection, v))
		}
	}
	if !injected {
		// An istio-proxy without the status annotation is normal: ztunnel,
		// waypoints and gateways deployed by istiod are not injected.
		return m, probs
	}

	proxy, native := findProxy(pod)
	switch {
	case proxy == nil:
		if c := findContainer(pod.Spec.InitContainers); c != nil {
			probs = append(probs, problem(ReasonSidecarStatus, "initContainers "+proxyName+" restartPolicy", restartPolicy(c)))
		} else {
			probs = append(probs, problem(ReasonSidecarStatus, annSidecarStatus, "no "+proxyName+" container"))
		}
		return m, probs
	case native:
		m |= markNative
	default:
		m |= markProxy
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodInitialized && c.Status == corev1.ConditionTrue {
			m |= markInitialized
		}
	}

	e := readEnv(proxy)
	if noCapture(proxy, e, ann) {
		m |= markNoCapture
	}
	dns, probs := dnsCapture(proxy, e, ann, probs)
	switch dns {
	case dnsOn:
		m |= markDNSOn
	case dnsOff:
		m |= markDNSOff
	}
	return m, probs
}

// findProxy returns the pod's istio-proxy as Istio's FindSidecar finds it
// (pkg/kube/inject/app_probe.go): spec.containers first, then a native
// sidecar in spec.initContainers. Native is decided by the list, not by
// restartPolicy alone: newer Kubernetes lets regular containers carry a
// restartPolicy too, and those still start after the init containers.
func findProxy(pod *corev1.Pod) (proxy *corev1.Container, native bool) {
	if c := findContainer(pod.Spec.Containers); c != nil {
		return c, false
	}
	if c := findContainer(pod.Spec.InitContainers); c != nil && isNative(c) {
		return c, true
	}
	return nil, false
}

func findContainer(cs []corev1.Container) *corev1.Container {
	for i := range cs {
		if cs[i].Name == proxyName {
			return &cs[i]
		}
	}
	return nil
}

// isNative reports whether the init container c is a native sidecar.
func isNative(c *corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

func restartPolicy(c *corev1.Container) string {
	if c.RestartPolicy == nil {
		return "unset"
	}
	return string(*c.RestartPolicy)
}

// proxyEnv is what classing needs of istio-proxy's env. Kubernetes passes
// the last of duplicate names (makeEnvironmentVariables, kubelet), so each
// field holds the last entry of its name.
type proxyEnv struct {
	dns, proxyConfig, disable, intercept *corev1.EnvVar
	metaJSON                             []*corev1.EnvVar // ISTIO_METAJSON_*, in order
}

func readEnv(c *corev1.Container) proxyEnv {
	var e proxyEnv
	for i := range c.Env {
		v := &c.Env[i]
		switch v.Name {
		case envDNSCapture:
			e.dns = v
		case envProxyConf:
			e.proxyConfig = v
		case envDisable:
			e.disable = v
		case envIntercept:
			e.intercept = v
		default:
			if strings.HasPrefix(v.Name, envMetaJSON) {
				e.metaJSON = append(e.metaJSON, v)
			}
		}
	}
	return e
}

// noCapture reports whether the proxy leaves the app's outbound traffic
// alone. istio-cni skips a pod whose istio-proxy has DISABLE_ENVOY true or a
// proxy type other than "sidecar" (ExtractPodInfo and the checks after it,
// cni/pkg/plugin/kubernetes.go and plugin.go); with interception mode NONE
// the injector adds no istio-init (injection-template.yaml) and istiod
// treats the proxy as not intercepting (Proxy.GetInterceptionMode,
// pilot/pkg/model/context.go).
func noCapture(c *corev1.Container, e proxyEnv, ann map[string]string) bool {
	if len(c.Args) >= 2 && c.Args[0] == "proxy" && c.Args[1] != "sidecar" {
		return true
	}
	if e.disable != nil {
		if b, err := strconv.ParseBool(e.disable.Value); err == nil && b {
			return true
		}
	}
	mode := ann[annInterception]
	if e.intercept != nil {
		mode = e.intercept.Value
	}
	return mode == "NONE"
}

type tri uint8

const (
	dnsSilent tri = iota
	dnsOn
	dnsOff
)

// dnsCapture decides DNS capture from the pod's own marks, as the agent
// builds its node metadata DNS_CAPTURE, which is what istiod reads
// (GetNodeMetaData, pkg/bootstrap/config.go): ISTIO_METAJSON_* env over
// ISTIO_META_DNS_CAPTURE env over the agent's ProxyConfig.ProxyMetadata,
// where that ProxyConfig is the mesh file under PROXY_CONFIG under the
// proxy.istio.io/config annotation (getMeshConfig,
// pilot/cmd/pilot-agent/config/config.go). Values are read with
// strconv.ParseBool (StringBool.UnmarshalJSON, pkg/model/proxy.go); a value
// it rejects fails the agent's bootstrap, so it counts as off.
func dnsCapture(c *corev1.Container, e proxyEnv, ann map[string]string, probs []Problem) (tri, []Problem) {
	// The annotation is read first so that a bad one is always reported:
	// the agent fails to start with it (getMeshConfig), whatever decides.
	annDNS := dnsSilent
	if text, ok := ann[annProxyConfig]; ok {
		annDNS, probs = proxyConfigMark(text, annProxyConfig, probs)
	}
	// ISTIO_METAJSON_*: JSON objects merged last; the last one naming
	// DNS_CAPTURE wins. Istio ignores one that is not a JSON object.
	for i := len(e.metaJSON) - 1; i >= 0; i-- {
		v := e.metaJSON[i]
		if v.ValueFrom != nil {
			return dnsOff, append(probs, problem(ReasonProxyEnv, v.Name, "valueFrom"))
		}
		if !strings.Contains(v.Value, "DNS_CAPTURE") {
			continue
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal([]byte(v.Value), &obj) != nil {
			continue
		}
		raw, ok := obj["DNS_CAPTURE"]
		if !ok {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return dnsOff, append(probs, problem(ReasonProxyEnv, v.Name, v.Value))
		}
		return boolMark(s, v.Name, ReasonProxyEnv, probs)
	}
	if v := e.dns; v != nil {
		if v.ValueFrom != nil {
			return dnsOff, append(probs, problem(ReasonProxyEnv, envDNSCapture, "valueFrom"))
		}
		return boolMark(v.Value, envDNSCapture, ReasonProxyEnv, probs)
	}
	// The agent's ProxyConfig: the annotation over PROXY_CONFIG (whose
	// proxyMetadata the template also renders into the env, so it decides
	// alone only under a custom template).
	low := annDNS
	if v := e.proxyConfig; low == dnsSilent && v != nil && v.ValueFrom == nil && strings.Contains(v.Value, envDNSCapture) {
		low, probs = proxyConfigMark(v.Value, envProxyConf, probs)
	}
	// envFrom may set the env vars above from a ConfigMap or Secret this
	// package cannot see, and they would win. Say so only when it matters.
	if len(c.EnvFrom) > 0 && low != dnsOff {
		if low == dnsOn {
			probs = append(probs, problem(ReasonProxyEnv, proxyName+" envFrom", "may set "+envDNSCapture))
		}
		return dnsOff, probs
	}
	return low, probs
}

// proxyConfigMark reads DNS capture from the YAML of a ProxyConfig.
func proxyConfigMark(text, name string, probs []Problem) (tri, []Problem) {
	s, found, err := proxyMetadataDNS(text)
	switch {
	case err != nil:
		return dnsOff, append(probs, problem(ReasonProxyConfig, name, text))
	case found:
		return boolMark(s, name, ReasonProxyConfig, probs)
	}
	return dnsSilent, probs
}

func boolMark(s, name, reason string, probs []Problem) (tri, []Problem) {
	b, err := strconv.ParseBool(s)
	switch {
	case err != nil:
		return dnsOff, append(probs, problem(reason, name, s))
	case b:
		return dnsOn, probs
	}
	return dnsOff, probs
}

// proxyMetadataDNS reads proxyMetadata.ISTIO_META_DNS_CAPTURE from the YAML
// (or JSON) of a ProxyConfig. Istio decodes it with protomarshal.ApplyYAML
// (YAML to JSON, then jsonpb): both the JSON name proxyMetadata and the
// proto name proxy_metadata are accepted, and a value that is not a string
// makes the whole config invalid.
func proxyMetadataDNS(text string) (value string, found bool, err error) {
	js, err := yaml.YAMLToJSON([]byte(text))
	if err != nil {
		return "", false, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return "", false, err
	}
	for _, key := range []string{"proxyMetadata", "proxy_metadata"} {
		raw, ok := top[key]
		if !ok {
			continue
		}
		var md map[string]json.RawMessage
		if err := json.Unmarshal(raw, &md); err != nil {
			return "", false, err
		}
		v, ok := md[envDNSCapture]
		if !ok {
			continue
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", false, fmt.Errorf("proxyMetadata.%s: %w", envDNSCapture, err)
		}
		value, found = s, true
	}
	return value, found, nil
}

// isJSONObject reports whether s is a JSON object, as the status annotation
// always is (json.Marshal of SidecarInjectionStatus, pkg/kube/inject/inject.go).
func isJSONObject(s string) bool {
	t := strings.TrimLeft(s, " \t\r\n")
	return strings.HasPrefix(t, "{") && json.Valid([]byte(t))
}

// problem builds a Problem with the value cut to 64 bytes at a rune start.
func problem(reason, name, value string) Problem {
	const max = 64
	if len(value) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(value[cut]) {
			cut--
		}
		value = value[:cut] + "…"
	}
	return Problem{Reason: reason, Item: name + "=" + value}
}
