package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/argoproj/argo-cd/gitops-engine/v3/pkg/health"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	argolua "github.com/argoproj/argo-cd/v3/util/lua"
)

// healthTestName is the argv[0] of ve-migrate's own part: Argo CD's health_test.yaml cases of the
// given resource_customizations directories, run in Argo CD's Lua VM.
const healthTestName = "argocd-health-test"

type healthCase struct {
	InputPath    string              `json:"inputPath"`
	HealthStatus health.HealthStatus `json:"healthStatus"`
}

// healthTest runs each <dir>/health.lua on the objects <dir>/health_test.yaml names, the way the
// application controller runs a resource customization (util/lua's VM with UseOpenLibs false: the base
// and table libraries and a safe os, no string library), and compares status and message exactly, as
// upstream's own TestLuaHealthScript does. It prints one line per case and exits 1 on any difference.
func healthTest(dirs []string) int {
	if len(dirs) == 0 {
		fmt.Fprintf(os.Stderr, "usage: %s DIR... (each with health.lua and health_test.yaml)\n", healthTestName)
		return 2
	}
	failed := 0
	for _, dir := range dirs {
		script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		raw, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		var cases struct {
			Tests []healthCase `json:"tests"`
		}
		if err := yaml.Unmarshal(raw, &cases); err != nil || len(cases.Tests) == 0 {
			fmt.Fprintf(os.Stderr, "%s: no tests (%v)\n", filepath.Join(dir, "health_test.yaml"), err)
			return 2
		}
		vm := argolua.VM{}
		for _, c := range cases.Tests {
			name := filepath.Join(dir, c.InputPath)
			input, err := os.ReadFile(name)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			obj := map[string]any{}
			if err := yaml.Unmarshal(input, &obj); err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
				return 2
			}
			got, err := vm.ExecuteHealthLua(&unstructured.Unstructured{Object: obj}, string(script))
			switch {
			case err != nil:
				fmt.Printf("FAIL %s: %v\n", name, err)
				failed++
			case got.Status != c.HealthStatus.Status || got.Message != c.HealthStatus.Message:
				fmt.Printf("FAIL %s: got %s %q, want %s %q\n", name, got.Status, got.Message,
					c.HealthStatus.Status, c.HealthStatus.Message)
				failed++
			default:
				fmt.Printf("ok %s: %s %q\n", name, got.Status, got.Message)
			}
		}
	}
	if failed > 0 {
		return 1
	}
	return 0
}
