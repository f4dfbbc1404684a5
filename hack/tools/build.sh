#!/usr/bin/env bash
# Build the pinned Helm releases of go.mod into OUT_DIR (default: <repo>/target/tools):
#   helm   Helm 4 (helm.sh/helm/v4/cmd/helm)
#   helm3  Helm 3 (helm.sh/helm/v3/cmd/helm)
# from their Go modules (the Go module proxy), never from a downloaded release binary.
#
# Cheap when up to date: a stamp over go.mod, go.sum, this script and `go version` is
# kept in OUT_DIR/.stamp and the build is skipped when it matches and both binaries
# exist. Concurrent callers serialise on OUT_DIR/.lock. Builds use the normal Go build
# cache, so the second binary reuses the packages the first compiled.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/build-once.sh
source "$repo/hack/build-once.sh"
build_into "${1:-$repo/target/tools}"

stamp() {
	(
		cd "$here"
		{
			sha256sum go.mod go.sum build.sh
			go version
		} | sha256sum | cut -d' ' -f1
	)
}

want=$(stamp)
skip_if_built "$out" "$want" helm helm3

# The releases this module is pinned to, for the version ldflags.
module_version() {
	local v
	v=$(awk -v m="$1" '$1 == m && $2 ~ /^v[0-9]/ { print $2; exit }' "$here/go.mod")
	if [[ ! $v =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
		echo "build.sh: cannot find a release of $1 in $here/go.mod" >&2
		exit 1
	fi
	echo "$v"
}
helm4_version=$(module_version helm.sh/helm/v4)
helm3_version=$(module_version helm.sh/helm/v3)

now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1fs", e - s }'; }

start=$(now)
echo "build.sh: building helm ($helm4_version) and helm3 ($helm3_version) into $out" >&2

# As helm's own Makefile does: static (CGO_ENABLED=0), -trimpath, stripped, and the
# release written into internal/version (otherwise `helm version` says "v4.3" or
# "v3.22"). The module proxy does not record the commit, so gitCommit stays empty.
export CGO_ENABLED=0
common="-s -w"
ldflags4="$common"
ldflags4+=" -X helm.sh/helm/v4/internal/version.version=$helm4_version"
ldflags4+=" -X helm.sh/helm/v4/internal/version.metadata="
ldflags4+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

# Helm 3 also takes the Kubernetes version it assumes without a cluster (`helm template`,
# `helm lint`: .Capabilities.KubeVersion, deprecation checks) from ldflags, derived from
# client-go like its Makefile does (v0.N.x is Kubernetes 1.N); left unset it says 1.20.
# Helm 4 reads it from the binary's module information at run time.
client_go=$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/client-go)
if [[ ! $client_go =~ ^v([0-9]+)\.([0-9]+)\. ]]; then
	echo "build.sh: cannot parse the k8s.io/client-go version ($client_go)" >&2
	exit 1
fi
kube_major=$((BASH_REMATCH[1] + 1))
kube_minor=${BASH_REMATCH[2]}
ldflags3="$common"
ldflags3+=" -X helm.sh/helm/v3/internal/version.version=$helm3_version"
ldflags3+=" -X helm.sh/helm/v3/internal/version.metadata="
ldflags3+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	ldflags3+=" -X $pkg.k8sVersionMajor=$kube_major -X $pkg.k8sVersionMinor=$kube_minor"
done

tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Two invocations (both commands are named helm); the second reuses the first's
# compiled packages from the build cache and mostly only links.
t=$(now)
(cd "$here" && go build -trimpath -ldflags "$ldflags4" -o "$tmp/helm" helm.sh/helm/v4/cmd/helm)
echo "build.sh: helm $helm4_version built in $(elapsed "$t")" >&2
t=$(now)
(cd "$here" && go build -trimpath -ldflags "$ldflags3" -o "$tmp/helm3" helm.sh/helm/v3/cmd/helm)
echo "build.sh: helm3 $helm3_version built in $(elapsed "$t")" >&2

mv -f "$tmp/helm" "$out/helm"
mv -f "$tmp/helm3" "$out/helm3"
echo "$want" >"$out/.stamp"
echo "build.sh: built in $(elapsed "$start")" >&2
