#!/usr/bin/env bash
# Runs the build steps of the Dockerfile natively, for machines without a container engine:
# a locked, static (musl) release build of restatus, and checks that the result is static.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
target=x86_64-unknown-linux-musl
if ! command -v musl-gcc >/dev/null 2>&1; then
	sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
	$sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
cargo fetch --locked
cargo build --locked --release --target "$target" --bin restatus
bin=target/$target/release/restatus
"$bin" --version
# Static: no program interpreter and no shared libraries (readelf comes with binutils,
# which the C toolchain the build needs brings along).
if readelf --program-headers "$bin" | grep -q "program interpreter" ||
	readelf --dynamic "$bin" | grep -q "(NEEDED)"; then
	echo "check-dockerfile: $bin is dynamically linked" >&2
	exit 1
fi
echo "check-dockerfile: $bin is static ($(stat -c %s "$bin") bytes)"
