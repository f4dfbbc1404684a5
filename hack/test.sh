#!/usr/bin/env bash
# Runs the whole test suite: unit, router, TLS and Redis integration tests, and the
# end-to-end tests against a real kube-apiserver + etcd (tests/cluster/) and real Redis.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash hack/prereqs.sh
cargo test --locked --all-targets "$@"
