# shellcheck shell=bash
# Sourced by the scripts that build the Go tools (tests/cluster/build.sh, hack/tools/build.sh),
# which are cheap when up to date: each keeps a stamp of its inputs in OUT/.stamp.
#
# build_into DIR
#   Makes DIR, sets `out` to its absolute path, and puts Go's default install on PATH when
#   `go` is not found.
#
# skip_if_built OUT STAMP BIN...
#   Ends the calling script (exit 0) when every BIN is an executable in OUT and OUT/.stamp
#   holds STAMP. Otherwise it takes OUT/.lock, held until the script ends, so that concurrent
#   callers build once, and checks again: another caller may have finished the build while
#   this one waited for the lock.

build_into() {
	mkdir -p "$1"
	out=$(cd "$1" && pwd)
	command -v go >/dev/null 2>&1 || PATH=$PATH:/usr/local/go/bin
}

built() {
	local out=$1 want=$2 bin
	shift 2
	for bin in "$@"; do
		[[ -x $out/$bin ]] || return 1
	done
	[[ -f $out/.stamp && $(<"$out/.stamp") == "$want" ]]
}

skip_if_built() {
	if built "$@"; then
		exit 0
	fi
	exec 9>"$1/.lock"
	flock 9
	if built "$@"; then
		exit 0
	fi
}
