//go:build !linux

package main

import (
	"os"

	"k8s.io/klog/v2"
)

// redirectStderr sends the components' logs to the log file. Without dup3,
// output written straight to file descriptor 2 (e.g. Go runtime panics) still
// goes to the original stderr.
func redirectStderr(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	orig := os.Stderr
	os.Stderr = f
	klog.LogToStderr(false)
	klog.SetOutput(f)
	return orig, nil
}
