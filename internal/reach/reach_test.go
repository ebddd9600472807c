package reach

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// loadPod decodes testdata/<name>.yaml strictly, so a typo in a manifest
// fails the test instead of silently dropping a field.
func loadPod(t testing.TB, name string) *corev1.Pod {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &pod
}

func proxyOf(t testing.TB, pod *corev1.Pod) *corev1.Container {
	t.Helper()
	for _, cs := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for i := range cs {
			if cs[i].Name == proxyName {
				return &cs[i]
			}
		}
	}
	t.Fatal("no istio-proxy")
	return nil
}

// setEnv replaces every env entry called name by one with value, at the end
// (or only removes them when value is nil).
func setEnv(t testing.TB, pod *corev1.Pod, name string, value *string) {
	c := proxyOf(t, pod)
	c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
	if value != nil {
		c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: *value})
	}
}

func ptr(s string) *string { return &s }

func annotate(pod *corev1.Pod, k, v string) {
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[k] = v
}

func TestMarksOf(t *testing.T) {
	cases := []struct {
		name   string
		file   string
		mutate func(t testing.TB, pod *corev1.Pod)
		// want is the class.
		want     Class
		problems []string // reasons, in order
		sidecar  bool
	}{
		// Pods as Istio 1.28's injector and istio-cni leave them.
		{name: "classic sidecar with DNS capture", file: "sidecar-dns-capture", want: Mesh, sidecar: true},
		{name: "classic sidecar without DNS capture", file: "sidecar-no-dns", want: DeclaredOnly, sidecar: true},
		{name: "classic sidecar still initializing", file: "sidecar-initializing", want: Outside, sidecar: true},
		{name: "native sidecar, DNS capture from its annotation, app init running", file: "native-sidecar", want: Mesh, sidecar: true},
		{name: "ambient, redirection enabled", file: "ambient-enabled", want: Mesh},
		{name: "ambient, redirection pending", file: "ambient-pending", want: Outside},
		{name: "opted out of injection", file: "opted-out", want: Outside},
		{name: "plain pod", file: "plain", want: Outside},
		{name: "host network", file: "host-network", want: Outside},
		{name: "gateway: proxy router captures nothing", file: "gateway", want: Outside, sidecar: true},
		{name: "ztunnel: istio-proxy without status is normal", file: "ztunnel", want: Outside},

		// Odd marks.
		{name: "status not JSON, istio-proxy still proves the sidecar", file: "odd-status-not-json",
			want: DeclaredOnly, problems: []string{ReasonSidecarStatus}, sidecar: true},
		{name: "status without istio-proxy", file: "odd-status-no-proxy",
			want: Outside, problems: []string{ReasonSidecarStatus}},
		{name: "proxy config annotation with an unquoted boolean", file: "odd-proxy-config",
			want: DeclaredOnly, problems: []string{ReasonProxyConfig}, sidecar: true},
		{name: "DNS capture yes", file: "odd-dns-env",
			want: DeclaredOnly, problems: []string{ReasonProxyEnv}, sidecar: true},
		{name: "ambient enabled on an injected pod", file: "odd-ambient-sidecar",
			want: DeclaredOnly, problems: []string{ReasonAmbientRedirection}, sidecar: true},

		// Variants: how ParseBool reads the env.
		{name: "env True", file: "sidecar-no-dns", mutate: func(t testing.TB, p *corev1.Pod) { setEnv(t, p, envDNSCapture, ptr("True")) },
			want: Mesh, sidecar: true},
		{name: "env 1", file: "sidecar-no-dns", mutate: func(t testing.TB, p *corev1.Pod) { setEnv(t, p, envDNSCapture, ptr("1")) },
			want: Mesh, sidecar: true},
		{name: "env 0", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) { setEnv(t, p, envDNSCapture, ptr("0")) },
			want: DeclaredOnly, sidecar: true},
		{name: "env empty fails ParseBool", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) { setEnv(t, p, envDNSCapture, ptr("")) },
			want: DeclaredOnly, problems: []string{ReasonProxyEnv}, sidecar: true},
		{name: "duplicate env: the last wins", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			c := proxyOf(t, p)
			c.Env = append(c.Env, corev1.EnvVar{Name: envDNSCapture, Value: "false"})
		}, want: DeclaredOnly, sidecar: true},
		{name: "env valueFrom cannot be read", file: "sidecar-no-dns", mutate: func(t testing.TB, p *corev1.Pod) {
			c := proxyOf(t, p)
			c.Env = append(c.Env, corev1.EnvVar{Name: envDNSCapture, ValueFrom: &corev1.EnvVarSource{
				ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "dns"}, Key: "capture"}}})
		}, want: DeclaredOnly, problems: []string{ReasonProxyEnv}, sidecar: true},

		// Variants: precedence.
		{name: "annotation added after injection, env silent", file: "sidecar-no-dns", mutate: func(_ testing.TB, p *corev1.Pod) {
			annotate(p, annProxyConfig, "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n")
		}, want: Mesh, sidecar: true},
		{name: "annotation by proto field name", file: "sidecar-no-dns", mutate: func(_ testing.TB, p *corev1.Pod) {
			annotate(p, annProxyConfig, `{"proxy_metadata": {"ISTIO_META_DNS_CAPTURE": "true"}}`)
		}, want: Mesh, sidecar: true},
		{name: "env false beats annotation true", file: "native-sidecar", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envDNSCapture, ptr("false"))
		}, want: DeclaredOnly, sidecar: true},
		{name: "annotation not YAML, env decides", file: "sidecar-dns-capture", mutate: func(_ testing.TB, p *corev1.Pod) {
			annotate(p, annProxyConfig, "proxyMetadata: [ISTIO_META_DNS_CAPTURE")
		}, want: Mesh, problems: []string{ReasonProxyConfig}, sidecar: true},
		{name: "annotation without proxyMetadata", file: "sidecar-no-dns", mutate: func(_ testing.TB, p *corev1.Pod) {
			annotate(p, annProxyConfig, "holdApplicationUntilProxyStarts: true\n")
		}, want: DeclaredOnly, sidecar: true},
		{name: "PROXY_CONFIG alone (custom template)", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envDNSCapture, nil)
		}, want: Mesh, sidecar: true},
		{name: "PROXY_CONFIG broken", file: "sidecar-no-dns", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envProxyConf, ptr(`{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":"true"`))
		}, want: DeclaredOnly, problems: []string{ReasonProxyConfig}, sidecar: true},
		{name: "annotation beats PROXY_CONFIG", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envDNSCapture, nil)
			annotate(p, annProxyConfig, "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"false\"\n")
		}, want: DeclaredOnly, sidecar: true},
		{name: "ISTIO_METAJSON beats env", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, "ISTIO_METAJSON_OVERRIDES", ptr(`{"DNS_CAPTURE":"false"}`))
		}, want: DeclaredOnly, sidecar: true},
		{name: "ISTIO_METAJSON not JSON is ignored", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, "ISTIO_METAJSON_OVERRIDES", ptr(`DNS_CAPTURE=false`))
		}, want: Mesh, sidecar: true},
		{name: "ISTIO_METAJSON non-string fails bootstrap", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, "ISTIO_METAJSON_OVERRIDES", ptr(`{"DNS_CAPTURE":true}`))
		}, want: DeclaredOnly, problems: []string{ReasonProxyEnv}, sidecar: true},
		{name: "envFrom may override the annotation", file: "native-sidecar", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envDNSCapture, nil)
			setEnv(t, p, envProxyConf, nil)
			proxyOf(t, p).EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "proxy-env"}}}}
		}, want: DeclaredOnly, problems: []string{ReasonProxyEnv}, sidecar: true},
		{name: "envFrom under an explicit env", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			proxyOf(t, p).EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "proxy-env"}}}}
		}, want: Mesh, sidecar: true},

		// Variants: the mesh config file, the only place the mesh decides.
		{name: "mesh file mounted, pod silent", file: "sidecar-no-dns", mutate: func(t testing.TB, p *corev1.Pod) {
			c := proxyOf(t, p)
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "config-volume", MountPath: "/etc/istio/config"})
		}, want: DeclaredOnly, sidecar: true},
		{name: "mesh file by --meshConfig", file: "sidecar-no-dns", mutate: func(t testing.TB, p *corev1.Pod) {
			c := proxyOf(t, p)
			c.Args = append(c.Args, "--meshConfig", "./config/mesh.yaml")
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "mesh", MountPath: "/config/mesh.yaml", SubPath: "mesh"})
		}, want: DeclaredOnly, sidecar: true},
		{name: "mesh file mounted, pod decides", file: "odd-dns-env", mutate: func(t testing.TB, p *corev1.Pod) {
			c := proxyOf(t, p)
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "config-volume", MountPath: "/etc/istio/config"})
		}, want: DeclaredOnly, problems: []string{ReasonProxyEnv}, sidecar: true},

		// Variants: capture.
		{name: "interception NONE", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envIntercept, ptr("NONE"))
		}, want: Outside, sidecar: true},
		{name: "interception NONE by annotation only", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envIntercept, nil)
			annotate(p, annInterception, "NONE")
		}, want: Outside, sidecar: true},
		{name: "interception TPROXY", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envIntercept, ptr("TPROXY"))
		}, want: Mesh, sidecar: true},
		{name: "DISABLE_ENVOY (proxyless gRPC)", file: "sidecar-dns-capture", mutate: func(t testing.TB, p *corev1.Pod) {
			setEnv(t, p, envDisable, ptr("true"))
		}, want: Outside, sidecar: true},
		{name: "istio-proxy init container that is not native", file: "native-sidecar", mutate: func(t testing.TB, p *corev1.Pod) {
			proxyOf(t, p).RestartPolicy = nil
		}, want: Outside, problems: []string{ReasonSidecarStatus}},
		{name: "restartPolicy on a regular istio-proxy container is still classic", file: "sidecar-initializing", mutate: func(t testing.TB, p *corev1.Pod) {
			always := corev1.ContainerRestartPolicyAlways
			proxyOf(t, p).RestartPolicy = &always
		}, want: Outside, sidecar: true},
		{name: "classic sidecar without an Initialized condition", file: "sidecar-dns-capture", mutate: func(_ testing.TB, p *corev1.Pod) {
			p.Status.Conditions = nil
		}, want: Outside, sidecar: true},
		{name: "istio-proxy in both lists: the container wins", file: "sidecar-no-dns", mutate: func(_ testing.TB, p *corev1.Pod) {
			always := corev1.ContainerRestartPolicyAlways
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: proxyName, RestartPolicy: &always,
				Env: []corev1.EnvVar{{Name: envDNSCapture, Value: "true"}}})
		}, want: DeclaredOnly, sidecar: true},

		// Variants: ambient.
		{name: "ambient, unknown redirection value", file: "ambient-enabled", mutate: func(_ testing.TB, p *corev1.Pod) {
			annotate(p, annRedirection, "Enabled")
		}, want: Outside, problems: []string{ReasonAmbientRedirection}},
		{name: "ambient, empty redirection value", file: "ambient-enabled", mutate: func(_ testing.TB, p *corev1.Pod) {
			annotate(p, annRedirection, "")
		}, want: Outside, problems: []string{ReasonAmbientRedirection}},
		{name: "host network wins over every mark", file: "sidecar-dns-capture", mutate: func(_ testing.TB, p *corev1.Pod) {
			p.Spec.HostNetwork = true
			annotate(p, annRedirection, "bogus")
		}, want: Outside},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := loadPod(t, tc.file)
			if tc.mutate != nil {
				tc.mutate(t, pod)
			}
			m, probs := MarksOf(pod)
			if got := m.Class(); got != tc.want {
				t.Errorf("Class() = %v, want %v (marks %v)", got, tc.want, m)
			}
			var reasons []string
			for _, p := range probs {
				reasons = append(reasons, p.Reason)
				if p.Item == "" || len(p.Item) > 200 {
					t.Errorf("problem item %q", p.Item)
				}
			}
			if !slices.Equal(reasons, tc.problems) {
				t.Errorf("problems %v, want reasons %v", probs, tc.problems)
			}
			if m.Sidecar() != tc.sidecar {
				t.Errorf("Sidecar() = %v, want %v (marks %v)", m.Sidecar(), tc.sidecar, m)
			}
		})
	}
}

func TestMarksOfNil(t *testing.T) {
	m, probs := MarksOf(nil)
	if m.Class() != Outside || probs != nil {
		t.Fatalf("MarksOf(nil) = %v, %v", m, probs)
	}
}

func TestProblemItemCut(t *testing.T) {
	long := strings.Repeat("é", 100) // 2 bytes a rune
	p := problem(ReasonSidecarStatus, annSidecarStatus, long)
	v := strings.TrimPrefix(p.Item, annSidecarStatus+"=")
	if !strings.HasSuffix(v, "…") || len(v) > 64+len("…") {
		t.Fatalf("item %q", p.Item)
	}
	if !strings.HasPrefix(long, strings.TrimSuffix(v, "…")) {
		t.Fatalf("item %q is not a prefix of the value", p.Item)
	}
}

func TestStrings(t *testing.T) {
	for c, want := range map[Class]string{Outside: "outside", DeclaredOnly: "declared_only", Mesh: "mesh", 7: "class(7)"} {
		if c.String() != want {
			t.Errorf("%d.String() = %q, want %q", c, c.String(), want)
		}
	}
	m, _ := MarksOf(loadPod(t, "sidecar-dns-capture"))
	if got := m.String(); got != "injected|proxy|initialized|dns_on" {
		t.Errorf("Marks.String() = %q", got)
	}
	if got := Marks(0).String(); got != "none" {
		t.Errorf("Marks(0).String() = %q", got)
	}
}

// FuzzMarksOf feeds the marks MarksOf reads from the fuzzer: it must never
// panic, every class must be one of the three, and turning the mesh's DNS
// capture on must never lower a class.
func FuzzMarksOf(f *testing.F) {
	f.Add(`{"initContainers":["istio-init"],"containers":["istio-proxy"]}`, "", "", "true", "{}", "", "REDIRECT", "", uint16(0b0000_0110))
	f.Add(`{`, "enabled", "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: yes", "", `{"proxyMetadata":{"ISTIO_META_DNS_CAPTURE":1}}`, `{"DNS_CAPTURE":true}`, "NONE", "1", uint16(0xffff))
	f.Add("", "pending", "proxy_metadata: {ISTIO_META_DNS_CAPTURE: \"True\"}", "", "", "", "", "", uint16(0b1_0000_0000))
	f.Add("{}", "enabled", "", "", "", "", "", "", uint16(0b10_0000_1000))
	f.Fuzz(func(t *testing.T, status, redirection, proxyConfigAnn, dnsEnv, proxyConfigEnv, metaJSON, intercept, disable string, flags uint16) {
		bit := func(i uint) bool { return flags&(1<<i) != 0 }
		pod := &corev1.Pod{}
		pod.Spec.HostNetwork = bit(0)
		ann := map[string]string{}
		if bit(1) {
			ann[annSidecarStatus] = status
		}
		if redirection != "" || bit(8) {
			ann[annRedirection] = redirection
		}
		if proxyConfigAnn != "" {
			ann[annProxyConfig] = proxyConfigAnn
		}
		if bit(9) {
			ann[annInterception] = intercept
		}
		pod.Annotations = ann
		proxy := corev1.Container{Name: proxyName, Args: []string{"proxy", "sidecar"}}
		if bit(10) {
			proxy.Args = []string{"proxy", intercept, "--meshConfig", disable}
		}
		env := []struct {
			name, value string
			on          bool
		}{
			{envDNSCapture, dnsEnv, dnsEnv != "" || bit(11)},
			{envProxyConf, proxyConfigEnv, proxyConfigEnv != ""},
			{"ISTIO_METAJSON_X", metaJSON, metaJSON != ""},
			{envIntercept, intercept, intercept != "" && !bit(9)},
			{envDisable, disable, disable != ""},
		}
		for _, e := range env {
			if e.on {
				proxy.Env = append(proxy.Env, corev1.EnvVar{Name: e.name, Value: e.value})
			}
		}
		if bit(12) {
			proxy.EnvFrom = []corev1.EnvFromSource{{}}
		}
		if bit(13) {
			proxy.VolumeMounts = []corev1.VolumeMount{{MountPath: "/etc/istio/config"}}
		}
		if bit(14) {
			proxy.Env = append(proxy.Env, corev1.EnvVar{Name: envDNSCapture, ValueFrom: &corev1.EnvVarSource{}})
		}
		switch {
		case bit(2) && bit(3): // native sidecar
			always := corev1.ContainerRestartPolicyAlways
			proxy.RestartPolicy = &always
			pod.Spec.InitContainers = []corev1.Container{proxy}
		case bit(2):
			pod.Spec.Containers = []corev1.Container{{Name: "app"}, proxy}
		case bit(3): // an init container named istio-proxy, not native
			pod.Spec.InitContainers = []corev1.Container{proxy}
		}
		if bit(4) {
			pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodInitialized, Status: corev1.ConditionTrue}}
		}

		m, probs := MarksOf(pod)
		on := m.Class()
		if on != Outside && on != DeclaredOnly && on != Mesh {
			t.Fatalf("class %d out of range (marks %v)", on, m)
		}
		if pod.Spec.HostNetwork && (on != Outside || len(probs) != 0) {
			t.Fatalf("host network: %v, %v", on, probs)
		}
		if on == Mesh && !m.Sidecar() && ann[annRedirection] != "enabled" {
			t.Fatalf("mesh without sidecar or ambient: %v", m)
		}
		for _, p := range probs {
			switch p.Reason {
			case ReasonSidecarStatus, ReasonProxyConfig, ReasonProxyEnv, ReasonAmbientRedirection:
			default:
				t.Fatalf("unknown reason %q", p.Reason)
			}
			if len(p.Item) > 200 {
				t.Fatalf("item too long: %d bytes", len(p.Item))
			}
		}
		_ = m.String()
	})
}

// BenchmarkMarksOf measures reading one pod, as the caller does for every pod
// add or update. Run with -benchmem.
func BenchmarkMarksOf(b *testing.B) {
	for _, name := range []string{"sidecar-dns-capture", "sidecar-no-dns", "native-sidecar", "ambient-enabled", "plain"} {
		pod := loadPod(b, name)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m, _ := MarksOf(pod)
				if m.Class() > Mesh {
					b.Fatal("bad class")
				}
			}
		})
	}
}
