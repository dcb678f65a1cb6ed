// Command testcluster is one multi-call binary holding a Kubernetes control
// plane for tests: etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler, built from their Go modules (see README.md).
//
// It dispatches on the program name (a symlink named kube-apiserver, etcd, ...)
// or, failing that, on the first argument:
//
//	testcluster kube-apiserver --etcd-servers=... ...
//	ln -s testcluster etcd && ./etcd --data-dir=...
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json, as upstream mains do
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

func run(name string, args []string) int {
	if name == "etcd" {
		// etcdmain.Main reads os.Args[1:] as etcd's flags.
		etcdmain.Main(append([]string{"etcd"}, args...))
		return 0
	}
	if newCmd, ok := commands[name]; ok {
		cmd := newCmd()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	}
	return -1
}

func main() {
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	if code := run(name, os.Args[1:]); code >= 0 {
		os.Exit(code)
	}
	if len(os.Args) > 1 {
		if code := run(os.Args[1], os.Args[2:]); code >= 0 {
			os.Exit(code)
		}
	}
	fmt.Fprintf(os.Stderr, "usage: %s {etcd|kube-apiserver|kube-controller-manager|kube-scheduler} [flags]\n", name)
	os.Exit(2)
}
