// Command cri-sweep stops and removes every Pod sandbox of one CRI runtime (its socket is the only
// argument). `vemigrate controlplane down` runs it after stopping the kubelet, so containerd itself
// tears down what it set up for each Pod: the containers, the CNI network (veth, IP, NAT rules) and
// the network namespace's mount.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cri-sweep SOCKET")
		os.Exit(2)
	}
	if err := sweep(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "cri-sweep:", err)
		os.Exit(1)
	}
}

func sweep(socket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := runtimeapi.NewRuntimeServiceClient(conn)
	sandboxes, err := client.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	for _, sandbox := range sandboxes.Items {
		if _, err := client.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox.Id}); err != nil {
			return fmt.Errorf("stopping sandbox %s: %w", sandbox.Id, err)
		}
		if _, err := client.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox.Id}); err != nil {
			return fmt.Errorf("removing sandbox %s: %w", sandbox.Id, err)
		}
		fmt.Printf("removed Pod sandbox %s (%s/%s)\n", sandbox.Id, sandbox.Metadata.GetNamespace(), sandbox.Metadata.GetName())
	}
	return nil
}
