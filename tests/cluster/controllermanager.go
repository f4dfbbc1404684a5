package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apiserver/pkg/server/healthz"
	v1core "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/controller-manager/pkg/clientbuilder"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	"k8s.io/kubernetes/cmd/kube-controller-manager/names"
)

// controllerManagerShutdownTimeout bounds how long the controllers get to
// return once the context is cancelled; it fits in shutdownTimeout.
const controllerManagerShutdownTimeout = 5 * time.Second

// controllerManagerFlags are the kube-controller-manager flags of the local
// control plane: the admin identity for every controller, no leader
// election, no HTTP server, and the cluster CA for the controllers that
// publish or sign with it.
func controllerManagerFlags(kubeconfig, controllers string, p *pki) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=" + controllers,
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--root-ca-file=" + p.caCert,
		"--cluster-signing-cert-file=" + p.caCert,
		"--cluster-signing-key-file=" + p.caKey,
		"--controller-shutdown-timeout=" + controllerManagerShutdownTimeout.String(),
	}
}

// normalizeControllers checks a --controllers list before anything starts
// and returns it without blanks. Items are controller names or aliases, "*"
// (the controllers kube-controller-manager enables by default) or "-name"
// (disable), as for kube-controller-manager's --controllers.
func normalizeControllers(list string) (string, error) {
	known := sets.New(app.KnownControllers()...)
	aliases := app.ControllerAliases()
	items := strings.Split(list, ",")
	for i, item := range items {
		item = strings.TrimSpace(item)
		items[i] = item
		name, disable := strings.CutPrefix(item, "-")
		if canonical, ok := aliases[name]; ok {
			name = canonical
		}
		switch {
		case item == "*":
		case !known.Has(name):
			return "", fmt.Errorf("--controllers: unknown controller %q", item)
		case name == names.ServiceAccountTokenController && !disable:
			// app.Run builds this one with a client builder it keeps to
			// itself. It only mints legacy token Secrets, which nothing
			// here needs.
			return "", fmt.Errorf("--controllers: %q is not supported", item)
		}
	}
	return strings.Join(items, ","), nil
}

// runControllerManager runs the kube-controller-manager controllers named in
// controllers (the --controllers syntax) in-process until ctx is cancelled.
// ready is closed once the controllers are built and started, their shared
// informers have synced and, when the garbage collector runs, its dependency
// graph has synced. An error before that means the controller manager did not
// start.
//
// It mirrors app.Run with --leader-elect=false and --secure-port=0, built from
// the same exported steps (CreateControllerContext, BuildControllers,
// RunControllers), so that the informers are at hand for the ready check.
// Feature gates, the emulation version and logging are process-wide; the API
// server has already set them up, and the controller manager shares them.
func runControllerManager(ctx context.Context, kubeconfig, controllers string, p *pki, ready chan<- struct{}) error {
	s, err := options.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	known, disabledByDefault, aliases := app.KnownControllers(), app.ControllersDisabledByDefault(), app.ControllerAliases()
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // the error is reported; skip the long usage text
	for _, f := range s.Flags(known, disabledByDefault, aliases).FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(controllerManagerFlags(kubeconfig, controllers, p)); err != nil {
		return fmt.Errorf("kube-controller-manager flags: %w", err)
	}
	c, err := s.Config(ctx, known, disabledByDefault, aliases)
	if err != nil {
		return err
	}
	cc := c.Complete()

	cc.EventBroadcaster.StartStructuredLogging(0)
	cc.EventBroadcaster.StartRecordingToSink(&v1core.EventSinkImpl{Interface: cc.Client.CoreV1().Events("")})
	defer cc.EventBroadcaster.Shutdown()

	// Every controller uses the admin identity (--use-service-account-credentials=false).
	clientBuilder := clientbuilder.SimpleControllerClientBuilder{ClientConfig: cc.Kubeconfig}
	controllerCtx, err := app.CreateControllerContext(ctx, cc, clientBuilder, clientBuilder)
	if err != nil {
		return err
	}
	descriptors := app.NewControllerDescriptors()
	delete(descriptors, names.ServiceAccountTokenController)
	ctrls, err := app.BuildControllers(ctx, controllerCtx, descriptors, nil, noHealthChecks{})
	if err != nil {
		return err
	}
	if len(ctrls) == 0 {
		return fmt.Errorf("--controllers=%s enables no controller that can run here", controllers)
	}

	controllerCtx.InformerFactory.Start(ctx.Done())
	defer controllerCtx.InformerFactory.Shutdown()
	controllerCtx.ObjectOrMetadataInformerFactory.Start(ctx.Done())
	close(controllerCtx.InformersStarted)

	go func() {
		if controllersSynced(ctx, controllerCtx) {
			close(ready)
		}
	}()

	if !app.RunControllers(ctx, controllerCtx, ctrls, app.ControllerStartJitter, cc.ControllerShutdownTimeout) {
		return errors.New("controllers did not stop within " + cc.ControllerShutdownTimeout.String())
	}
	if ctx.Err() == nil {
		return errors.New("all controllers returned")
	}
	return nil
}

// controllersSynced waits until the shared informers the controllers asked
// for have synced and, if the garbage collector runs, until it has built its
// dependency graph (it starts its own informers for every resource type once
// it runs). It returns false when ctx is cancelled first.
func controllersSynced(ctx context.Context, controllerCtx app.ControllerContext) bool {
	for _, synced := range controllerCtx.InformerFactory.WaitForCacheSync(ctx.Done()) {
		if !synced {
			return false
		}
	}
	if controllerCtx.GraphBuilder == nil {
		return true
	}
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for !controllerCtx.GraphBuilder.IsSynced(logger) {
		select {
		case <-ctx.Done():
			return false
		case <-ticker.C:
		}
	}
	return true
}

// noHealthChecks drops the controllers' health checks: with the HTTP server
// disabled nothing serves them.
type noHealthChecks struct{}

func (noHealthChecks) AddHealthChecker(...healthz.HealthChecker) {}
