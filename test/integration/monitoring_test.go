package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"
)

// scrapeLabels are the labels Prometheus adds to every series it scrapes; le
// is a histogram bucket's bound.
var scrapeLabels = []string{"instance", "job", "le"}

// checkMonitoring checks deploy/monitoring against what the CoreDNS at
// metricsAddr exports: every metric an alert rule or a dashboard query names
// is exported (a histogram's series by its family), and every label the
// query matches on or groups by is one of the metric's (or one Prometheus
// adds). The server must have answered enough for every series to exist.
func checkMonitoring(t *testing.T, metricsAddr string) {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(httpGet(t, "http://"+metricsAddr+"/metrics")))
	if err != nil {
		t.Fatalf("parsing the metrics: %v", err)
	}
	labels := make(map[string][]string) // by series name
	for name, f := range families {
		var names []string
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if !slices.Contains(names, l.GetName()) {
					names = append(names, l.GetName())
				}
			}
		}
		labels[name] = names
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				labels[name+suffix] = names
			}
		}
	}

	var exprs []string
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr, For    string
				Labels, Annotations map[string]string
			}
		}
	}
	readYAML(t, "../../deploy/monitoring/alerts.yaml", &rules)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	var dashboard struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	raw, err := os.ReadFile("../../deploy/monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dashboard); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	for _, p := range dashboard.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, target := range p.Targets {
			exprs = append(exprs, target.Expr)
		}
	}
	if len(exprs) == 0 {
		t.Fatal("no alert rule or dashboard query read")
	}
	for _, expr := range exprs {
		checkExpr(t, expr, labels)
	}
}

var (
	metricName = regexp.MustCompile(`\bcoredns_[a-z0-9_]+`)
	matchers   = regexp.MustCompile(`(coredns_[a-z0-9_]+)\{([^}]*)\}`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	grouping   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// checkExpr checks one PromQL expression's metrics and labels against
// labels, the label names of each exported series.
func checkExpr(t *testing.T, expr string, labels map[string][]string) {
	t.Helper()
	names := metricName.FindAllString(expr, -1)
	if len(names) == 0 {
		t.Errorf("%q names no CoreDNS metric", expr)
	}
	for _, name := range names {
		if _, ok := labels[name]; !ok {
			t.Errorf("%q: the binary exports no %s", expr, name)
		}
	}
	for _, m := range matchers.FindAllStringSubmatch(expr, -1) {
		for _, l := range matcher.FindAllStringSubmatch(m[2], -1) {
			if !slices.Contains(labels[m[1]], l[1]) && !slices.Contains(scrapeLabels, l[1]) {
				t.Errorf("%q: %s has no label %s (it has %v)", expr, m[1], l[1], labels[m[1]])
			}
		}
	}
	for _, g := range grouping.FindAllStringSubmatch(expr, -1) {
		for l := range strings.SplitSeq(g[1], ",") {
			l = strings.TrimSpace(l)
			if slices.Contains(scrapeLabels, l) {
				continue
			}
			if !slices.ContainsFunc(names, func(name string) bool { return slices.Contains(labels[name], l) }) {
				t.Errorf("%q: groups by %s, a label of none of %v", expr, l, names)
			}
		}
	}
}

// readYAML decodes the YAML file at path into out.
func readYAML(t *testing.T, path string, out any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, out); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
