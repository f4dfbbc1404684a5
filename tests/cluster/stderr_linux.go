package main

import (
	"os"
	"syscall"
)

// redirectStderr points file descriptor 2 at the log file, so that everything
// the API server, etcd, gRPC and the Go runtime write to stderr ends up there.
// It returns a handle on the original stderr for the program's own messages.
func redirectStderr(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	orig, err := syscall.Dup(2)
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(orig)
	if err := syscall.Dup3(int(f.Fd()), 2, 0); err != nil {
		_ = syscall.Close(orig)
		return nil, err
	}
	return os.NewFile(uintptr(orig), "/dev/stderr"), nil
}
