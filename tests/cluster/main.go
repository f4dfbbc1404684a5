// Command kube-cluster runs a local Kubernetes control plane for tests: an
// embedded etcd and the real kube-apiserver, both on 127.0.0.1. No
// controllers, scheduler or kubelet run; it serves the Kubernetes API only.
//
// Once the API server is ready it writes an admin kubeconfig to the path given
// by --kubeconfig and prints one line, "ready <server-url>", to stdout.
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
	apiserverArgs  []string
}

func parseFlags(args []string) (*cliOptions, error) {
	o := &cliOptions{}
	fs := flag.NewFlagSet("kube-cluster", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "path to write the admin kubeconfig to once the API server is ready (required)")
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for etcd data, certificates and keys (default: a fresh temporary directory, removed on exit)")
	fs.IntVar(&o.port, "port", 0, "secure port of the API server on 127.0.0.1 (0: pick a free port)")
	fs.StringVar(&o.logFile, "log-file", "", "write API server and etcd logs to this file instead of stderr")
	fs.BoolVar(&o.exitOnStdinEOF, "exit-on-stdin-eof", false, "shut down when stdin reaches EOF")
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

	code := 0
	readyErr := waitReady(ctx, serverURL, pki, readyTimeout, apiserverDone, etcd.Err())
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
		case err := <-etcd.Err():
			logf("etcd failed: %v", err)
			code = 1
			cancel(errors.New("etcd failed"))
		}
	case ctx.Err() != nil:
		logf("shutting down before ready: %v", context.Cause(ctx))
	default:
		logf("control plane did not become ready: %v", readyErr)
		code = 1
		cancel(readyErr)
	}

	// Bounded shutdown: stop the API server (ctx is cancelled), then etcd.
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case err := <-apiserverDone:
			if err != nil && code == 0 {
				logf("API server: %v", err)
			}
		case <-time.After(shutdownTimeout - 2*time.Second):
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
