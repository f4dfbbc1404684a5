// Command kube-cluster runs a local Kubernetes control plane for tests: an
// embedded etcd and the real kube-apiserver, both on 127.0.0.1. With
// --controllers it also runs those kube-controller-manager controllers
// in-process (e.g. --controllers namespace,garbagecollector); by default no
// controllers run. No scheduler or kubelet ever runs.
//
// Once the API server (and the controllers, if any) are ready it writes an
// admin kubeconfig to the path given by --kubeconfig and prints one line,
// "ready <server-url>", to stdout.
// SIGINT, SIGTERM (and, with --exit-on-stdin-eof, EOF on stdin) shut it down
// cleanly.
//
// Arguments after "--" are passed to kube-apiserver verbatim and override the
// built-in flags, e.g.
//
//	kube-cluster --kubeconfig /tmp/kc -- --v=2 --feature-gates=Foo=true
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	readyTimeout    = 60 * time.Second
	shutdownTimeout = 10 * time.Second
)

type cliOptions struct {
	kubeconfig     string
	dataDir        string
	port           int
	logFile        string
	exitOnStdinEOF bool
	controllers    string
	apiserverArgs  []string
}

func parseFlags(args []string) (*cliOptions, error) {
	o := &cliOptions{}
	fs := flag.NewFlagSet("kube-cluster", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "path to write the admin kubeconfig to once the API server is ready (required)")
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for etcd data, certificates and keys (default: a fresh temporary directory, removed on exit)")
	fs.IntVar(&o.port, "port", 0, "secure port of the API server on 127.0.0.1 (0: pick a free port)")
	fs.StringVar(&o.logFile, "log-file", "", "write API server, controller manager and etcd logs to this file instead of stderr")
	fs.BoolVar(&o.exitOnStdinEOF, "exit-on-stdin-eof", false, "shut down when stdin reaches EOF")
	fs.StringVar(&o.controllers, "controllers", "", "comma-separated kube-controller-manager controllers to run in-process, e.g. namespace,garbagecollector (default: none, no controller manager)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: kube-cluster --kubeconfig PATH [flags] [-- kube-apiserver flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.kubeconfig == "" {
		fs.Usage()
		return nil, errors.New("--kubeconfig is required")
	}
	if o.port < 0 || o.port > 65535 {
		return nil, fmt.Errorf("--port %d out of range", o.port)
	}
	if o.controllers = strings.TrimSpace(o.controllers); o.controllers != "" {
		list, err := normalizeControllers(o.controllers)
		if err != nil {
			return nil, err
		}
		o.controllers = list
	}
	o.apiserverArgs = fs.Args()
	return o, nil
}

func main() {
	os.Exit(run())
}

func run() int {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "kube-cluster: %v\n", err)
		return 2
	}

	// Our own diagnostics always go to the original stderr, even when the
	// components' logs are redirected to --log-file.
	diag := os.Stderr
	if opts.logFile != "" {
		diag, err = redirectStderr(opts.logFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kube-cluster: %v\n", err)
			return 1
		}
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(diag, "kube-cluster: "+format+"\n", args...)
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)

	// Data directory.
	dataDir := opts.dataDir
	cleanup := func() {}
	if dataDir == "" {
		dataDir, err = os.MkdirTemp("", "kube-cluster-")
		if err != nil {
			logf("%v", err)
			return 1
		}
		cleanup = func() { _ = os.RemoveAll(dataDir) }
		defer cleanup()
	} else {
		if dataDir, err = filepath.Abs(dataDir); err == nil {
			err = os.MkdirAll(dataDir, 0o700)
		}
		if err != nil {
			logf("data dir: %v", err)
			return 1
		}
	}

	// Shutdown triggers. A second signal skips the graceful path.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		cancel(fmt.Errorf("received %v", s))
		s = <-sigs
		logf("received %v again, exiting immediately", s)
		cleanup()
		os.Exit(1)
	}()
	if opts.exitOnStdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel(errors.New("stdin closed"))
		}()
	}

	pki, err := generatePKI(filepath.Join(dataDir, "pki"))
	if err != nil {
		logf("generating certificates: %v", err)
		return 1
	}

	// The API server listener is opened here so that a free port is reserved
	// without a race and a busy --port fails early.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.port)))
	if err != nil {
		logf("API server listener: %v", err)
		return 1
	}
	port := ln.Addr().(*net.TCPAddr).Port
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", port)

	etcd, err := startEtcd(ctx, filepath.Join(dataDir, "etcd"))
	if err != nil {
		_ = ln.Close()
		logf("starting etcd: %v", err)
		return 1
	}

	apiserverDone := make(chan error, 1)
	go func() {
		apiserverDone <- runAPIServer(ctx, ln, port, etcd.clientURL, pki, opts.apiserverArgs)
	}()

	// The controller manager, if any, starts once the API server is ready.
	// controllersDone stays nil (never ready in a select) without it.
	var controllersDone chan error

	code := 0
	readyErr := waitReady(ctx, serverURL, pki, readyTimeout, apiserverDone, etcd.Err())
	if readyErr != nil {
		readyErr = fmt.Errorf("control plane did not become ready: %w", readyErr)
	} else if opts.controllers != "" {
		controllersDone = make(chan error, 1)
		readyErr = startControllerManager(ctx, dataDir, serverURL, opts.controllers, pki, controllersDone, apiserverDone, etcd.Err())
		if readyErr != nil {
			readyErr = fmt.Errorf("controller manager did not start: %w", readyErr)
		}
	}
	switch {
	case readyErr == nil:
		if err := writeKubeconfig(opts.kubeconfig, serverURL, pki); err != nil {
			logf("writing kubeconfig: %v", err)
			code = 1
			cancel(err)
			break
		}
		fmt.Fprintf(os.Stdout, "ready %s\n", serverURL)
		_ = os.Stdout.Sync()

		select {
		case <-ctx.Done():
			logf("shutting down: %v", context.Cause(ctx))
		case err := <-apiserverDone:
			apiserverDone <- err
			logf("API server exited: %v", err)
			code = 1
			cancel(errors.New("API server exited"))
		case err := <-controllersDone:
			controllersDone <- err
			logf("controller manager exited: %v", err)
			code = 1
			cancel(errors.New("controller manager exited"))
		case err := <-etcd.Err():
			logf("etcd failed: %v", err)
			code = 1
			cancel(errors.New("etcd failed"))
		}
	case ctx.Err() != nil:
		logf("shutting down before ready: %v", context.Cause(ctx))
	default:
		logf("%v", readyErr)
		code = 1
		cancel(readyErr)
	}

	// Bounded shutdown: the controllers and the API server stop together (ctx
	// is cancelled); etcd is closed once both have returned.
	done := make(chan struct{})
	go func() {
		defer close(done)
		stopCtx, stopCancel := context.WithTimeout(context.Background(), shutdownTimeout-2*time.Second)
		defer stopCancel()
		if controllersDone != nil {
			select {
			case err := <-controllersDone:
				if err != nil && code == 0 {
					logf("controller manager: %v", err)
				}
			case <-stopCtx.Done():
				logf("controller manager did not stop in time")
			}
		}
		select {
		case err := <-apiserverDone:
			if err != nil && code == 0 {
				logf("API server: %v", err)
			}
		case <-stopCtx.Done():
			logf("API server did not stop in time")
		}
		etcd.Close()
	}()
	select {
	case <-done:
	case <-time.After(shutdownTimeout):
		logf("shutdown did not finish within %v; exiting anyway", shutdownTimeout)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// startControllerManager writes a kubeconfig for the controller manager to
// the data directory and starts it (see runControllerManager). It waits, at
// most readyTimeout, until the controllers run; done receives the result of
// runControllerManager, which the caller waits for on shutdown. It fails
// early when the controller manager, the API server or etcd exits.
func startControllerManager(ctx context.Context, dataDir, serverURL, controllers string, p *pki, done chan error, apiserverDone chan error, etcdErr <-chan error) error {
	kubeconfig := filepath.Join(dataDir, "controller-manager.kubeconfig")
	if err := writeKubeconfig(kubeconfig, serverURL, p); err != nil {
		done <- nil // nothing started
		return fmt.Errorf("writing %s: %w", kubeconfig, err)
	}
	ready := make(chan struct{})
	go func() {
		done <- runControllerManager(ctx, kubeconfig, controllers, p, ready)
	}()

	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-ready:
		return nil
	case err := <-done:
		return exited(done, err)
	case err := <-apiserverDone:
		return fmt.Errorf("API server: %w", exited(apiserverDone, err))
	case err := <-etcdErr:
		return fmt.Errorf("etcd: %w", err)
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-timer.C:
		return fmt.Errorf("controllers not running after %v", readyTimeout)
	}
}

// exited puts what a component's done channel received back for the caller's
// shutdown, and returns it as the reason the component ended early ("exited"
// when it returned without an error).
func exited(done chan error, err error) error {
	done <- err
	if err == nil {
		return errors.New("exited")
	}
	return err
}
