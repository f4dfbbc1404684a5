#!/usr/bin/env bash
# Generate the `replace` block that pins every k8s.io staging module to the
# release matching a Kubernetes version.
#
# Upstream k8s.io/kubernetes requires its staging modules (k8s.io/api,
# k8s.io/apiserver, ...) at the placeholder version v0.0.0 and replaces them
# with directories inside its own repository. A module that depends on
# k8s.io/kubernetes must replace each of them with the published tag
# (Kubernetes v1.X.Y <-> staging v0.X.Y).
#
# Usage:
#   gen-replace.sh VERSION        print the replace block for VERSION
#   gen-replace.sh -w VERSION     rewrite go.mod beside this script: require
#                                 k8s.io/kubernetes VERSION and the etcd server
#                                 release it requires, replace the k8s.io/*
#                                 replace directives with the generated block,
#                                 then run `go mod tidy`
#
# VERSION is a Kubernetes tag, e.g. v1.37.2.
set -euo pipefail

usage() {
	echo "usage: $0 [-w] VERSION   (e.g. $0 -w v1.37.2)" >&2
	exit 2
}

write=0
if [[ ${1:-} == "-w" ]]; then
	write=1
	shift
fi
[[ $# -eq 1 ]] || usage
version=$1
if [[ ! $version =~ ^v1\.([0-9]+\.[0-9]+.*)$ ]]; then
	echo "$0: VERSION must look like v1.MINOR.PATCH, got '$version'" >&2
	exit 2
fi
staging_version="v0.${BASH_REMATCH[1]}"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v go >/dev/null 2>&1 || PATH=$PATH:/usr/local/go/bin

# Download k8s.io/kubernetes@VERSION's go.mod (outside our module so the
# current go.mod does not influence resolution) and locate it.
gomod=$(cd / && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$version" |
	sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
if [[ -z $gomod || ! -f $gomod ]]; then
	echo "$0: could not download go.mod of k8s.io/kubernetes@$version" >&2
	exit 1
fi

# Every k8s.io/* module required at v0.0.0, inside or outside a require block.
mapfile -t modules < <(awk '
	/^require[[:space:]]*\(/ { inblock = 1; next }
	inblock && /^\)/ { inblock = 0; next }
	{
		line = $0
		sub(/\/\/.*/, "", line)
		n = split(line, f, /[[:space:]]+/)
		# normalise: drop empty leading field and a leading "require"
		i = 1
		while (i <= n && f[i] == "") i++
		if (!inblock) {
			if (f[i] != "require") next
			i++
		}
		if (f[i] ~ /^k8s\.io\// && f[i+1] == "v0.0.0") print f[i]
	}' "$gomod" | LC_ALL=C sort -u)

if [[ ${#modules[@]} -eq 0 ]]; then
	echo "$0: no k8s.io/* v0.0.0 requirements found in $gomod" >&2
	exit 1
fi

block=$(
	echo "replace ("
	for m in "${modules[@]}"; do
		printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"
	done
	echo ")"
)

if [[ $write -eq 0 ]]; then
	echo "$block"
	exit 0
fi

cd "$here"
# Drop every existing k8s.io/* replace, append the generated block and pin
# k8s.io/kubernetes itself to VERSION.
args=()
while read -r old; do
	args+=("-dropreplace=$old")
done < <(go mod edit -json | awk '
	/"Replace": \[/ { inrep = 1 }
	inrep && /"Old": \{/ { inold = 1; next }
	inrep && inold && /"Path":/ { gsub(/[",]/, "", $2); if ($2 ~ /^k8s\.io\//) print $2; inold = 0 }')
args+=("-require=k8s.io/kubernetes@$version")
# The embedded etcd follows the version Kubernetes itself was released with.
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$gomod")
if [[ -n $etcd_version ]]; then
	args+=("-require=go.etcd.io/etcd/server/v3@$etcd_version")
fi
go mod edit "${args[@]}"
printf '\n%s\n' "$block" >>go.mod
go mod edit -fmt
go mod tidy
echo "go.mod updated for k8s.io/kubernetes $version (staging $staging_version, ${#modules[@]} replaces)" >&2
