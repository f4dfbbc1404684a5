#!/usr/bin/env bash
# Installs what restatus's tests and demo need on a fresh Debian machine, when missing:
# redis-server and redis-cli (Debian's redis-server package), ss (iproute2), h2load
# (nghttp2-client, benchmarks only: pass --bench), and builds the local control plane
# (tests/cluster/, cached).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

want_bench=0
[[ ${1:-} == --bench ]] && want_bench=1

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
command -v ss >/dev/null 2>&1 || packages+=(iproute2)
if ((want_bench)); then
	command -v h2load >/dev/null 2>&1 || packages+=(nghttp2-client)
fi

if ((${#packages[@]})); then
	echo "prereqs: installing ${packages[*]} from Debian's packages" >&2
	sudo=""
	if [[ $(id -u) != 0 ]]; then
		command -v sudo >/dev/null 2>&1 || { echo "prereqs: need root or sudo to install ${packages[*]}" >&2; exit 1; }
		sudo=sudo
	fi
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq >/dev/null
	$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
	# The package starts a system-wide Redis on 6379; restatus's tests start their own.
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
		$sudo systemctl stop redis-server || true
	fi
fi

command -v go >/dev/null 2>&1 || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null 2>&1 || { echo "prereqs: the Go toolchain is needed to build the local control plane (tests/cluster/)" >&2; exit 1; }
bash "$repo/tests/cluster/build.sh"
