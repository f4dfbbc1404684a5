#!/usr/bin/env bash
# Build the pinned promtool of go.mod (github.com/prometheus/prometheus/cmd/promtool) into
# OUT_DIR (default: <repo>/target/promtool), from its Go module through the Go module proxy,
# for `promtool test rules tests/alerts/restatus.test.yaml`. A module of its own, so that
# Prometheus's dependencies never move the pinned Helm's (hack/tools).
#
# Cheap when up to date (a stamp over go.mod, go.sum, this script and `go version`), like
# hack/tools/build.sh. The first build downloads and compiles Prometheus's dependencies: a
# few hundred MB and minutes of CPU.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/build-once.sh
source "$repo/hack/build-once.sh"
build_into "${1:-$repo/target/promtool}"

stamp() {
	(
		cd "$here"
		{
			sha256sum go.mod go.sum build.sh tools.go
			go version
		} | sha256sum | cut -d' ' -f1
	)
}

want=$(stamp)
skip_if_built "$out" "$want" promtool

version=$(cd "$here" && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
if [[ -z $version ]]; then
	echo "build.sh: cannot find github.com/prometheus/prometheus in $here/go.mod" >&2
	exit 1
fi
echo "build.sh: building promtool (prometheus module $version) into $out" >&2
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0
(cd "$here" && go build -trimpath -ldflags "-s -w" -o "$tmp/promtool" github.com/prometheus/prometheus/cmd/promtool)
mv -f "$tmp/promtool" "$out/promtool"
echo "$want" >"$out/.stamp"
