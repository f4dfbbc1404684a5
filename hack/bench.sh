#!/usr/bin/env bash
# Latency of POST /mutate under load, measured with h2load (Debian's nghttp2-client) over
# HTTP/2 and TLS against a release build of restatus and a real redis-server.
#
# Three scenarios run back to back in the same run, so they can be compared as ratios on a
# noisy machine:
#   baseline   a dry-run status UPDATE: TLS, HTTP/2, decoding and planning, no Redis call
#   unchanged  the same 2 KiB status UPDATE over and over: one Redis script call, no write
#   changing   two 2 KiB statuses alternating: one Redis script call that writes (two h2load
#              processes share the clients; sequential runs have two requests in flight)
#
# Each scenario runs twice: sequential (1 client, 1 stream: the latency of one review) and
# loaded (4 clients x 8 streams: latency under queueing, and throughput).
#
#   hack/bench.sh                  10000 requests per scenario and load
#   REQUESTS=50000 hack/bench.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
requests=${REQUESTS:-10000}

bash hack/prereqs.sh --bench
cargo build --locked --release --quiet
restatus=$repo/target/release/restatus

work=$(mktemp -d "${TMPDIR:-/tmp}/restatus-bench.XXXXXX")
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_for() {
	local deadline=$((SECONDS + 30))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || { echo "bench: timed out waiting for: $*" >&2; exit 1; }
		sleep 0.1
	done
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_for redis-cli -p "$redis_port" ping

"$restatus" certs --out "$work/certs" --host 127.0.0.1 >/dev/null
port=$(free_port)
admin_port=$(free_port)
# Webhook only: no Kubernetes API is involved in answering a review.
env -u KUBECONFIG HOME="$work" "$restatus" serve --restore-worker=false \
	--listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" \
	--redis-url "redis://127.0.0.1:$redis_port" --log-level warn \
	--tls-cert-file "$work/certs/tls.crt" --tls-key-file "$work/certs/tls.key" \
	2>"$work/restatus.log" &
pids+=($!)
wait_for curl -fsS "http://127.0.0.1:$admin_port/readyz"

# Review bodies with a status of about 2 KiB, built from the status-update fixture.
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
review = json.load(open("tests/fixtures/reviews/kc-update-status.json"))
status = review["request"]["object"]["status"]
status["conditions"] = [
    {"type": f"Component{i}Ready", "status": "True", "reason": "AsExpected",
     "message": f"component {i} answers its health checks", "lastTransitionTime": "2026-11-20T09:14:02Z"}
    for i in range(12)]
size = len(json.dumps(status, separators=(",", ":")))
assert 1900 <= size <= 2300, size
def write(name, r):
    with open(f"{work}/{name}.json", "w") as f:
        json.dump(r, f, separators=(",", ":"))
write("unchanged", review)
write("a", review)
review["request"]["object"]["status"]["phase"] = "Upgrading"
write("b", review)
review["request"]["dryRun"] = True
write("baseline", review)
print(f"status size: {size} bytes; review size: {len(json.dumps(review))} bytes")
PY

url="https://127.0.0.1:$port/mutate"
run() { # label body requests clients streams
	h2load -n "$3" -c "$4" -m "$5" -H 'content-type: application/json' \
		--data="$work/$2.json" --log-file="$work/$1.$2.log" "$url" >"$work/$1.$2.out" 2>&1 ||
		{ cat "$work/$1.$2.out" >&2; exit 1; }
	grep -q " 0 failed, 0 errored" "$work/$1.$2.out" ||
		{ echo "bench: requests failed in $1" >&2; cat "$work/$1.$2.out" >&2; exit 1; }
}
# p50 p99 in ms from h2load's per-request logs (3rd column: µs until the end of the response).
summarize() {
	cat "$work"/"$1".*.log | awk '{ print $3 }' | sort -n | awk '
		{ v[NR] = $1 }
		END {
			i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
			i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
			printf "%.3f %.3f %d\n", v[i50] / 1000, v[i99] / 1000, NR
		}'
}
rps() { awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$work/$1.out"; }
written() { curl -fsS "http://127.0.0.1:$admin_port/metrics" | awk '$1 == "restatus_records_written_total" { print $2 }'; }

# Warm up connections, allocator and the Redis script cache.
run warmup baseline 2000 4 8
run warmup unchanged 2000 4 8

printf '\nPOST /mutate with a %s byte status, HTTP/2 + TLS, release build, %s cores (%s)\n' \
	"$(python3 -c 'import json,sys; print(len(json.dumps(json.load(open(sys.argv[1]))["request"]["object"]["status"], separators=(",", ":"))))' "$work/unchanged.json")" \
	"$(nproc)" "$(uname -m)"
for load in "sequential 1 1" "loaded 4 8"; do
	read -r name c m <<<"$load"
	run "$name-baseline" baseline "$requests" "$c" "$m"
	run "$name-unchanged" unchanged "$requests" "$c" "$m"
	before=$(written)
	# Two h2load processes, one per status, sharing the clients (at least one each).
	half=$((requests / 2))
	hc=$(((c + 1) / 2))
	run "$name-changing" a "$half" "$hc" "$m" &
	first=$!
	run "$name-changing" b "$half" "$hc" "$m"
	wait "$first"
	writes=$(awk -v a="$(written)" -v b="$before" 'BEGIN { print a - b }')
	read -r b50 _ _ < <(summarize "$name-baseline")
	printf '\n%s (%s client(s) x %s stream(s), %s requests per scenario)\n' "$name" "$c" "$m" "$requests"
	printf '  %-10s %9s %9s %13s %10s\n' scenario p50_ms p99_ms p50/baseline req/s
	for s in baseline unchanged changing; do
		read -r p50 p99 _ < <(summarize "$name-$s")
		ratio=$(awk -v a="$p50" -v b="$b50" 'BEGIN { printf "%.2fx", a / b }')
		r=$([[ $s == changing ]] && echo "-" || rps "$name-$s.$([[ $s == baseline ]] && echo baseline || echo unchanged)")
		printf '  %-10s %9s %9s %13s %10s\n' "$s" "$p50" "$p99" "$ratio" "$r"
	done
	printf '  changing: %s of %s reviews wrote a new record\n' "$writes" "$requests"
done
