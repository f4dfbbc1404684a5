package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// apiserverFlags are the kube-apiserver flags of the local control plane.
// Extra arguments given after "--" are appended and win.
func apiserverFlags(port int, etcdURL string, p *pki) []string {
	return []string{
		"--advertise-address=127.0.0.1",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--etcd-servers=" + etcdURL,
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--client-ca-file=" + p.caCert,
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		// The lease reconciler would publish 127.0.0.1 as the endpoint of the
		// "kubernetes" Service, which endpoint validation rejects (loopback),
		// and it would keep logging errors. Nothing here needs that endpoint.
		"--endpoint-reconciler-type=none",
		"--v=0",
	}
}

// runAPIServer runs kube-apiserver in-process on ln until ctx is cancelled.
// It mirrors what app.NewAPIServerCommand does, minus the signal handling,
// which is ours.
func runAPIServer(ctx context.Context, ln net.Listener, port int, etcdURL string, p *pki, extraArgs []string) error {
	s := options.NewServerRunOptions()
	registry := s.GenericServerRunOptions.ComponentGlobalsRegistry
	featureGate := registry.FeatureGateFor(basecompatibility.DefaultKubeComponent)

	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // the error is reported; skip the long usage text
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	args := append(apiserverFlags(port, etcdURL, p), extraArgs...)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kube-apiserver flags: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("kube-apiserver takes no arguments, got %q", fs.Args())
	}
	if err := registry.Set(); err != nil {
		return err
	}
	// kube-apiserver's loopback clients should not log self-issued warnings.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}

	// Serve on the listener reserved by the caller.
	s.SecureServing.Listener = ln
	s.SecureServing.BindPort = port

	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}
	featureGate.(featuregate.MutableFeatureGate).AddMetrics()
	registry.AddMetrics()
	return app.Run(ctx, completed)
}

// waitReady polls /readyz with the admin credentials until it answers 200,
// and then waits for the "kubernetes" Service in the "default" namespace,
// which the API server creates once its namespaces and service IP allocation
// are in place. It fails early when the API server or etcd exits.
func waitReady(ctx context.Context, server string, p *pki, timeout time.Duration, apiserverDone chan error, etcdErr <-chan error) error {
	tlsConfig, err := p.tlsConfig()
	if err != nil {
		return err
	}
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: tlsConfig},
		Timeout:   5 * time.Second,
	}
	defer client.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()

	var last string
	for _, path := range []string{"/readyz", "/api/v1/namespaces/default/services/kubernetes"} {
		for {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+path, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				last = fmt.Sprintf("GET %s: %s", path, resp.Status)
			} else {
				last = err.Error()
			}
			select {
			case err := <-apiserverDone:
				return fmt.Errorf("API server: %w", exited(apiserverDone, err))
			case err := <-etcdErr:
				return fmt.Errorf("etcd: %w", err)
			case <-ctx.Done():
				if context.Cause(ctx) == context.DeadlineExceeded {
					return fmt.Errorf("not ready after %v (last: %s)", timeout, last)
				}
				return context.Cause(ctx)
			case <-ticker.C:
			}
		}
	}
	return nil
}
