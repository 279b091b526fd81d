// check-deploy checks harmony's deployment files the way the tools that consume them would:
//
//   - Kubernetes manifests are decoded strictly into the API's own Go types (k8s.io/api), so a
//     misspelt or misplaced field, or a value of the wrong type, is an error, as it is for
//     `kubectl apply --validate=strict`. Custom resources (KEDA's ScaledObject) are validated
//     against the openAPIV3Schema of their CRD, with unknown fields refused.
//   - The references between them are followed: selectors select the pod template, probes and
//     services name ports the container declares, volumes name ConfigMaps and keys that exist,
//     the scaler targets the workload and the consumer groups harmony's configuration implies.
//   - docker-compose.yml is loaded by compose-go, the library `docker compose` itself uses,
//     which validates it against the Compose specification's schema; bind-mounted files must
//     exist.
//
// Usage: check-deploy -kubernetes DIR -crd FILE... -configmap-source NAME/KEY=FILE... -compose FILE
// Every problem is printed as "file: kind/name: problem"; the exit status is 1 if any.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/santhosh-tekuri/jsonschema/v6"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// problems collects what is wrong, by file.
type problems []string

func (p *problems) add(file, object, format string, args ...any) {
	*p = append(*p, fmt.Sprintf("%s: %s: %s", file, object, fmt.Sprintf(format, args...)))
}

func main() {
	var crds, sources list
	kubernetes := flag.String("kubernetes", "", "directory of Kubernetes manifests (*.yaml)")
	compose := flag.String("compose", "", "docker-compose file")
	flag.Var(&crds, "crd", "CustomResourceDefinition file to validate custom resources against (repeatable)")
	flag.Var(&sources, "configmap-source", "NAME/KEY=FILE: ConfigMap NAME's KEY must equal FILE (repeatable)")
	flag.Parse()

	var found problems
	checked := 0
	if *kubernetes != "" {
		n, err := checkKubernetes(*kubernetes, crds, sources, &found)
		if err != nil {
			fmt.Fprintln(os.Stderr, "check-deploy:", err)
			os.Exit(2)
		}
		checked += n
	}
	if *compose != "" {
		checkCompose(*compose, &found)
		checked++
	}
	for _, p := range found {
		fmt.Println(p)
	}
	if len(found) > 0 {
		fmt.Printf("%d problem(s)\n", len(found))
		os.Exit(1)
	}
	fmt.Printf("ok: %d objects and files checked\n", checked)
}

// object is one decoded manifest and where it came from.
type object struct {
	file string
	kind string
	name string
	raw  []byte // JSON
	typ  any    // the typed value, for built-in kinds
}

func (o object) id() string { return o.kind + "/" + o.name }

// Built-in kinds harmony's manifests use, by apiVersion and kind.
var builtIn = map[string]func() any{
	"apps/v1/StatefulSet":           func() any { return &appsv1.StatefulSet{} },
	"apps/v1/Deployment":            func() any { return &appsv1.Deployment{} },
	"v1/ConfigMap":                  func() any { return &corev1.ConfigMap{} },
	"v1/Service":                    func() any { return &corev1.Service{} },
	"v1/ServiceAccount":             func() any { return &corev1.ServiceAccount{} },
	"policy/v1/PodDisruptionBudget": func() any { return &policyv1.PodDisruptionBudget{} },
}

func checkKubernetes(dir string, crdFiles, sources []string, found *problems) (int, error) {
	schemas, err := loadCRDs(crdFiles)
	if err != nil {
		return 0, err
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return 0, err
	}
	if len(files) == 0 {
		return 0, fmt.Errorf("no *.yaml in %s", dir)
	}
	sort.Strings(files)
	var objects []object
	for _, file := range files {
		docs, err := documents(file)
		if err != nil {
			found.add(file, "-", "%v", err)
			continue
		}
		for i, doc := range docs {
			o, err := decode(file, doc, schemas)
			if err != nil {
				found.add(file, fmt.Sprintf("document %d", i+1), "%v", err)
				continue
			}
			objects = append(objects, o)
		}
	}
	crossCheck(objects, found)
	for _, s := range sources {
		checkSource(objects, s, found)
	}
	return len(objects), nil
}

// documents splits a YAML stream into its non-empty documents, as JSON.
func documents(file string) ([][]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, err
		}
		if string(js) != "null" {
			docs = append(docs, js)
		}
	}
}

func decode(file string, doc []byte, schemas map[string]*jsonschema.Schema) (object, error) {
	var meta struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(doc, &meta); err != nil {
		return object{}, err
	}
	key := meta.APIVersion + "/" + meta.Kind
	o := object{file: file, kind: meta.Kind, name: meta.Metadata.Name, raw: doc}
	if o.name == "" {
		return o, fmt.Errorf("%s without metadata.name", key)
	}
	if make, ok := builtIn[key]; ok {
		o.typ = make()
		// Strict: unknown and duplicate fields are errors, as the API server's strict
		// field validation makes them.
		if err := yaml.UnmarshalStrict(doc, o.typ); err != nil {
			return o, fmt.Errorf("%s: %v", o.id(), err)
		}
		return o, nil
	}
	schema, ok := schemas[key]
	if !ok {
		return o, fmt.Errorf("%s: no schema for %s (neither a built-in kind this check knows nor a given CRD)", o.id(), key)
	}
	value, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return o, err
	}
	if err := schema.Validate(value); err != nil {
		return o, fmt.Errorf("%s: %v", o.id(), err)
	}
	return o, nil
}

// loadCRDs compiles each served version's schema of each CRD, keyed by apiVersion/kind.
func loadCRDs(files []string) (map[string]*jsonschema.Schema, error) {
	schemas := map[string]*jsonschema.Schema{}
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSON(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		var crd struct {
			Spec struct {
				Group string `json:"group"`
				Names struct {
					Kind string `json:"kind"`
				} `json:"names"`
				Versions []struct {
					Name   string `json:"name"`
					Served bool   `json:"served"`
					Schema struct {
						OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
					} `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		if err := json.Unmarshal(js, &crd); err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		for _, v := range crd.Spec.Versions {
			if !v.Served || v.Schema.OpenAPIV3Schema == nil {
				continue
			}
			key := crd.Spec.Group + "/" + v.Name + "/" + crd.Spec.Names.Kind
			schema := strict(v.Schema.OpenAPIV3Schema)
			// apiVersion, kind and metadata are the API server's: the CRD schema leaves them open.
			compiler := jsonschema.NewCompiler()
			url := "file:///" + key + ".json"
			if err := compiler.AddResource(url, schema); err != nil {
				return nil, fmt.Errorf("%s: %v", file, err)
			}
			compiled, err := compiler.Compile(url)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %v", file, key, err)
			}
			schemas[key] = compiled
		}
	}
	return schemas, nil
}

// strict makes an OpenAPI v3 structural schema refuse fields it does not declare, as the
// API server's strict field validation does (it would otherwise prune them silently), and
// drops what JSON Schema does not know.
func strict(node any) any {
	switch n := node.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, v := range n {
			if strings.HasPrefix(k, "x-kubernetes-") {
				continue
			}
			out[k] = strict(v)
		}
		_, hasProperties := n["properties"]
		_, hasAdditional := n["additionalProperties"]
		preserve, _ := n["x-kubernetes-preserve-unknown-fields"].(bool)
		if hasProperties && !hasAdditional && !preserve {
			out["additionalProperties"] = false
		}
		// An int-or-string field has no type; OpenAPI marks it only with the extension.
		if intOrString, _ := n["x-kubernetes-int-or-string"].(bool); intOrString {
			delete(out, "type")
			out["anyOf"] = []any{map[string]any{"type": "integer"}, map[string]any{"type": "string"}}
		}
		return out
	case []any:
		out := make([]any, len(n))
		for i, v := range n {
			out[i] = strict(v)
		}
		return out
	default:
		return node
	}
}

// podTemplate is what a workload runs, with the object it belongs to.
type podTemplate struct {
	owner    object
	selector *metav1.LabelSelector
	template *corev1.PodTemplateSpec
}

func crossCheck(objects []object, found *problems) {
	byID := map[string]object{}
	var workloads []podTemplate
	for _, o := range objects {
		if _, dup := byID[o.id()]; dup {
			found.add(o.file, o.id(), "defined twice")
		}
		byID[o.id()] = o
		switch w := o.typ.(type) {
		case *appsv1.StatefulSet:
			workloads = append(workloads, podTemplate{o, w.Spec.Selector, &w.Spec.Template})
			if !hasObject(objects, "Service", w.Spec.ServiceName) {
				found.add(o.file, o.id(), "serviceName %q names no Service", w.Spec.ServiceName)
			}
		case *appsv1.Deployment:
			workloads = append(workloads, podTemplate{o, w.Spec.Selector, &w.Spec.Template})
		}
	}
	if len(workloads) == 0 {
		found.add("-", "-", "no StatefulSet or Deployment")
	}
	for _, w := range workloads {
		checkWorkload(w, objects, found)
	}
	for _, o := range objects {
		switch t := o.typ.(type) {
		case *corev1.Service:
			checkService(o, t, workloads, found)
		case *policyv1.PodDisruptionBudget:
			if !selectsAny(t.Spec.Selector, workloads) {
				found.add(o.file, o.id(), "selector selects no workload's pods")
			}
		}
		if o.kind == "ScaledObject" {
			checkScaledObject(o, objects, found)
		}
	}
}

func hasObject(objects []object, kind, name string) bool {
	for _, o := range objects {
		if o.kind == kind && o.name == name {
			return true
		}
	}
	return false
}

func selects(selector *metav1.LabelSelector, podLabels map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(selector)
	return err == nil && selector != nil && !s.Empty() && s.Matches(labels.Set(podLabels))
}

func selectsAny(selector *metav1.LabelSelector, workloads []podTemplate) bool {
	for _, w := range workloads {
		if selects(selector, w.template.Labels) {
			return true
		}
	}
	return false
}

func checkWorkload(w podTemplate, objects []object, found *problems) {
	o := w.owner
	if _, err := metav1.LabelSelectorAsSelector(w.selector); err != nil {
		found.add(o.file, o.id(), "selector: %v", err)
	}
	if !selects(w.selector, w.template.Labels) {
		found.add(o.file, o.id(), "selector does not select its own pod template's labels")
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range w.template.Spec.Volumes {
		volumes[v.Name] = v
		if v.ConfigMap != nil {
			cm := configMap(objects, v.ConfigMap.Name)
			optional := v.ConfigMap.Optional != nil && *v.ConfigMap.Optional
			if cm == nil && !optional {
				found.add(o.file, o.id(), "volume %q: no ConfigMap %q", v.Name, v.ConfigMap.Name)
			}
			for _, item := range v.ConfigMap.Items {
				if _, ok := cm.Data[item.Key]; cm != nil && !ok {
					found.add(o.file, o.id(), "volume %q: ConfigMap %q has no key %q", v.Name, v.ConfigMap.Name, item.Key)
				}
			}
		}
	}
	if len(w.template.Spec.Containers) == 0 {
		found.add(o.file, o.id(), "no containers")
	}
	for _, c := range w.template.Spec.Containers {
		where := fmt.Sprintf("container %q", c.Name)
		if c.Image == "" {
			found.add(o.file, o.id(), "%s: no image", where)
		}
		for _, m := range c.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok {
				found.add(o.file, o.id(), "%s: volumeMount %q names no volume", where, m.Name)
			}
		}
		if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/ready" {
			found.add(o.file, o.id(), "%s: readiness must be an HTTP probe of /ready (ready once the assigned partitions are restored)", where)
		} else if !declaresPort(c, c.ReadinessProbe.HTTPGet.Port.String()) {
			found.add(o.file, o.id(), "%s: readiness probe port %s is not a declared container port", where, c.ReadinessProbe.HTTPGet.Port.String())
		}
		if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil {
			if c.LivenessProbe.HTTPGet.Path != "/health" {
				found.add(o.file, o.id(), "%s: liveness must probe /health, not %s (/ready is false while restoring)", where, c.LivenessProbe.HTTPGet.Path)
			}
			if !declaresPort(c, c.LivenessProbe.HTTPGet.Port.String()) {
				found.add(o.file, o.id(), "%s: liveness probe port %s is not a declared container port", where, c.LivenessProbe.HTTPGet.Port.String())
			}
		}
	}
	grace := w.template.Spec.TerminationGracePeriodSeconds
	if grace == nil || *grace <= 30 {
		found.add(o.file, o.id(), "terminationGracePeriodSeconds must exceed harmony's shutdown_timeout (30 s by default)")
	}
}

func declaresPort(c corev1.Container, port string) bool {
	for _, p := range c.Ports {
		if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
			return true
		}
	}
	return false
}

func configMap(objects []object, name string) *corev1.ConfigMap {
	for _, o := range objects {
		if cm, ok := o.typ.(*corev1.ConfigMap); ok && o.name == name {
			return cm
		}
	}
	return nil
}

func checkService(o object, s *corev1.Service, workloads []podTemplate, found *problems) {
	selector := &metav1.LabelSelector{MatchLabels: s.Spec.Selector}
	var selected []podTemplate
	for _, w := range workloads {
		if selects(selector, w.template.Labels) {
			selected = append(selected, w)
		}
	}
	if len(selected) == 0 {
		found.add(o.file, o.id(), "selector selects no workload's pods")
		return
	}
	for _, p := range s.Spec.Ports {
		target := p.TargetPort.String()
		if p.TargetPort.IntValue() == 0 && p.TargetPort.StrVal == "" {
			target = fmt.Sprint(p.Port)
		}
		for _, w := range selected {
			ok := false
			for _, c := range w.template.Spec.Containers {
				ok = ok || declaresPort(c, target)
			}
			if !ok {
				found.add(o.file, o.id(), "port %q: target %s is no port of %s", p.Name, target, w.owner.id())
			}
		}
	}
}

// checkScaledObject follows a KEDA ScaledObject to its target and, for Kafka triggers, to the
// consumer groups harmony's configuration implies.
func checkScaledObject(o object, objects []object, found *problems) {
	var so struct {
		Spec struct {
			ScaleTargetRef struct {
				Kind string `json:"kind"`
				Name string `json:"name"`
			} `json:"scaleTargetRef"`
			MinReplicaCount *int `json:"minReplicaCount"`
			MaxReplicaCount *int `json:"maxReplicaCount"`
			Triggers        []struct {
				Type     string            `json:"type"`
				Metadata map[string]string `json:"metadata"`
			} `json:"triggers"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(o.raw, &so); err != nil {
		found.add(o.file, o.id(), "%v", err)
		return
	}
	kind := so.Spec.ScaleTargetRef.Kind
	if kind == "" {
		kind = "Deployment"
	}
	if !hasObject(objects, kind, so.Spec.ScaleTargetRef.Name) {
		found.add(o.file, o.id(), "scaleTargetRef names no %s %q", kind, so.Spec.ScaleTargetRef.Name)
	}
	if so.Spec.MinReplicaCount != nil && so.Spec.MaxReplicaCount != nil && *so.Spec.MinReplicaCount > *so.Spec.MaxReplicaCount {
		found.add(o.file, o.id(), "minReplicaCount exceeds maxReplicaCount")
	}
	groups := harmonyGroups(objects)
	for i, t := range so.Spec.Triggers {
		if t.Type != "kafka" {
			continue
		}
		for _, key := range []string{"bootstrapServers", "consumerGroup", "lagThreshold"} {
			if t.Metadata[key] == "" {
				found.add(o.file, o.id(), "trigger %d: kafka metadata needs %s", i+1, key)
			}
		}
		if g := t.Metadata["consumerGroup"]; g != "" && len(groups) > 0 && !groups[g] {
			found.add(o.file, o.id(), "trigger %d: consumerGroup %q is not one of harmony's groups (%s)", i+1, g, keys(groups))
		}
	}
}

var groupID = regexp.MustCompile(`(?m)^\s*group_id\s*=\s*"([^"]+)"`)

// harmonyGroups: the consumer groups of the harmony configurations in the ConfigMaps (stage 1
// reads as group_id, stage 2 as group_id.resolve).
func harmonyGroups(objects []object) map[string]bool {
	groups := map[string]bool{}
	for _, o := range objects {
		cm, ok := o.typ.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		for key, text := range cm.Data {
			if !strings.HasSuffix(key, ".toml") {
				continue
			}
			for _, m := range groupID.FindAllStringSubmatch(text, -1) {
				groups[m[1]] = true
				groups[m[1]+".resolve"] = true
			}
		}
	}
	return groups
}

func keys(m map[string]bool) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// checkSource: "NAME/KEY=FILE", the ConfigMap's key holds exactly the file.
func checkSource(objects []object, source string, found *problems) {
	ref, file, ok := strings.Cut(source, "=")
	name, key, ok2 := strings.Cut(ref, "/")
	if !ok || !ok2 {
		found.add("-", source, "not NAME/KEY=FILE")
		return
	}
	cm := configMap(objects, name)
	if cm == nil {
		found.add("-", "ConfigMap/"+name, "missing")
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		found.add(file, "-", "%v", err)
		return
	}
	if cm.Data[key] != string(want) {
		found.add(file, "ConfigMap/"+name, "key %q differs from %s: copy the file into it", key, file)
	}
}

func checkCompose(file string, found *problems) {
	dir := filepath.Dir(file)
	options, err := cli.NewProjectOptions(
		[]string{file},
		cli.WithWorkingDirectory(dir),
		cli.WithName("harmony"),
		cli.WithOsEnv,
	)
	if err != nil {
		found.add(file, "compose", "%v", err)
		return
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		found.add(file, "compose", "%v", err)
		return
	}
	names := project.ServiceNames()
	sort.Strings(names)
	for _, name := range names {
		service := project.Services[name]
		for _, v := range service.Volumes {
			if v.Type != "bind" {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				found.add(file, "service/"+name, "bind mount source %s does not exist", v.Source)
			}
		}
		if service.Build == nil && service.Image == "" {
			found.add(file, "service/"+name, "neither image nor build")
		}
	}
}
