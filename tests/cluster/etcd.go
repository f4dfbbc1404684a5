package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/logutil"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const etcdStartTimeout = 30 * time.Second

type etcdServer struct {
	*embed.Etcd
	clientURL string
	logLevel  zap.AtomicLevel
}

// Close stops etcd. Its listeners report "server closed" errors while it
// stops; those are expected and not logged.
func (s *etcdServer) Close() {
	s.logLevel.SetLevel(zapcore.FatalLevel)
	s.Etcd.Close()
}

// startEtcd starts a single-member etcd with its client and peer URLs on free
// loopback ports and waits until it serves requests. Ports are probed before
// etcd binds them, so a lost race is retried a few times.
func startEtcd(ctx context.Context, dir string) (*etcdServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		s, err := startEtcdOnce(ctx, dir)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil || !isAddrInUse(err) {
			break
		}
	}
	return nil, lastErr
}

func startEtcdOnce(ctx context.Context, dir string) (*etcdServer, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}

	cfg := embed.NewConfig()
	cfg.Name = "kube-cluster"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// An existing member directory (reused --data-dir) restarts the member.
	if _, err := os.Stat(filepath.Join(dir, "member")); err == nil {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	// Errors only, to stderr (which --log-file redirects).
	logCfg := logutil.DefaultZapLoggerConfig
	logCfg.Level = zap.NewAtomicLevelAt(zapcore.ErrorLevel)
	logCfg.OutputPaths = []string{"stderr"}
	logCfg.ErrorOutputPaths = []string{"stderr"}
	lg, err := logCfg.Build()
	if err != nil {
		return nil, err
	}
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{"stderr"}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	// Throwaway test data: skip fsync, which dominates write latency on
	// shared CI disks. A crashed process loses nothing; only an OS crash can.
	cfg.UnsafeNoFsync = true
	// The API server compacts etcd itself; keep the backend small anyway.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "5m"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	timer := time.NewTimer(etcdStartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return &etcdServer{Etcd: e, clientURL: clientURL.String(), logLevel: logCfg.Level}, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-ctx.Done():
		e.Close()
		return nil, context.Cause(ctx)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("etcd not ready after %v", etcdStartTimeout)
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}
