#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ one after the other, each for a set time, starting from
# the committed corpus (fuzz/corpus/<target>/), and reports per target the executions, the
# coverage reached and any crash. Exits non-zero when a target crashed.
#
#   hack/fuzz.sh [--merge] [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGET defaults to all of them. New inputs a run finds
# go to fuzz/target/corpus/<target>/ (not committed); with --merge, those that add coverage
# are merged into fuzz/corpus/<target>/ afterwards, to be committed.
#
# RESTATUS_FUZZ_SKIP=name,... turns off invariants that are known broken (see fuzz/README.md).
# Needs the nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

merge=false
seconds=60
targets=()
for arg in "$@"; do
	case $arg in
	--merge) merge=true ;;
	-h | --help)
		sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*[!0-9]*) targets+=("$arg") ;;
	*) seconds=$arg ;;
	esac
done
all=(review_decode plan decide fields)
if [ ${#targets[@]} -eq 0 ]; then
	targets=("${all[@]}")
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz.sh: the nightly toolchain is needed: rustup toolchain install nightly" >&2
	exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: installing cargo-fuzz"
	cargo install cargo-fuzz --locked
fi

logs=fuzz/target/logs
mkdir -p "$logs"
# -a: debug assertions (integer overflow checks) in restatus as in its tests.
cargo +nightly fuzz build -a

crashed=()
summary=()
for t in "${targets[@]}"; do
	scratch=fuzz/target/corpus/$t
	mkdir -p "$scratch"
	log=$logs/$t.log
	echo "=== $t: ${seconds}s (log: $log)"
	status=0
	# New inputs go to the first directory (scratch); the committed corpus is only read.
	cargo +nightly fuzz run -a "$t" "$scratch" "fuzz/corpus/$t" -- \
		-max_total_time="$seconds" -timeout=10 -max_len=65536 \
		-dict=fuzz/json.dict -print_final_stats=1 >"$log" 2>&1 || status=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
	artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
	line="$t: execs=${execs:-?} execs/s=${rate:-?} ${cov:-cov: ? ft: ?}"
	if [ "$status" -ne 0 ] || [ -n "$artifact" ]; then
		line="$line CRASH (exit $status) ${artifact:-no artifact}"
		crashed+=("$t")
		echo "--- $t crashed; the failure:"
		grep -E -m1 -A6 "panicked at|ERROR: (AddressSanitizer|libFuzzer)|==ERROR" "$log" || tail -20 "$log"
		[ -n "$artifact" ] && echo "reproduce: cargo +nightly fuzz run -a $t $artifact"
	fi
	echo "$line"
	summary+=("$line")

	if $merge && [ -z "$artifact" ]; then
		echo "--- merging new inputs of $t into fuzz/corpus/$t"
		before=$(find "fuzz/corpus/$t" -type f | wc -l)
		cargo +nightly fuzz run -a "$t" "fuzz/corpus/$t" "$scratch" -- -merge=1 \
			-max_len=65536 >"$logs/$t.merge.log" 2>&1
		after=$(find "fuzz/corpus/$t" -type f | wc -l)
		echo "$t: corpus $before -> $after inputs"
	fi
done

echo
echo "=== summary ($(date -u +%Y-%m-%dT%H:%MZ), ${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#crashed[@]} -gt 0 ]; then
	echo "crashed: ${crashed[*]} (inputs in fuzz/artifacts/<target>/; minimise with cargo +nightly fuzz tmin -a <target> <input>)" >&2
	exit 1
fi
