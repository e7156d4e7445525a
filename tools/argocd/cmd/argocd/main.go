// Command argocd is Argo CD's multi-call binary cut down to the two parts ve-migrate's local
// environment runs: it dispatches on argv[0] (or $ARGOCD_BINARY_NAME) like upstream's cmd/main.go,
// to argocd-application-controller or argocd-repo-server. Only their packages are compiled. A third
// name, argocd-health-test, is ours: health_test.yaml cases run in Argo CD's Lua VM (healthtest.go).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	appcontroller "github.com/argoproj/argo-cd/v3/cmd/argocd-application-controller/commands"
	reposerver "github.com/argoproj/argo-cd/v3/cmd/argocd-repo-server/commands"
	"github.com/argoproj/argo-cd/v3/common"
	"github.com/argoproj/argo-cd/v3/util/log"
)

func init() {
	klog.SetLogger(log.NewLogrusLogger(log.NewWithCurrentConfig()))
}

func main() {
	// Upstream's main calls grpc.DisableSRVLookups() here, which panics unless gRPC's grpclb balancer
	// turned SRV lookups on: upstream links it through parts left out of this binary, so they are off.
	name := filepath.Base(os.Args[0])
	if value := os.Getenv("ARGOCD_BINARY_NAME"); value != "" {
		name = value
	}
	var command *cobra.Command
	switch name {
	case healthTestName:
		os.Exit(healthTest(os.Args[1:]))
	case common.CommandApplicationController:
		command = appcontroller.NewCommand()
	case common.CommandRepoServer:
		command = reposerver.NewCommand()
	default:
		fmt.Fprintf(os.Stderr, "%s: run as %s, %s or %s (argv[0] or $ARGOCD_BINARY_NAME)\n",
			name, common.CommandApplicationController, common.CommandRepoServer, healthTestName)
		os.Exit(2)
	}
	if err := command.Execute(); err != nil {
		os.Exit(1)
	}
}
