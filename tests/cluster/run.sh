#!/usr/bin/env bash
# Start the local control plane (embedded etcd + kube-apiserver on 127.0.0.1,
# plus the kube-controller-manager controllers named by --controllers).
#
#   tests/cluster/run.sh --kubeconfig PATH [--data-dir DIR] [--port N]
#                        [--log-file PATH] [--exit-on-stdin-eof]
#                        [--controllers LIST] [-- kube-apiserver flags...]
#
# Builds the binaries first if needed (see build.sh; cached), then replaces
# itself with kube-cluster, which prints "ready <server-url>" on stdout once
# the kubeconfig is written. Build output goes to stderr only.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${KUBE_CLUSTER_OUT_DIR:-$(cd "$here/../.." && pwd)/target/cluster}
"$here/build.sh" "$out" >&2
exec "$out/kube-cluster" "$@"
