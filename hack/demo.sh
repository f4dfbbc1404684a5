#!/usr/bin/env bash
# restatus end to end on this machine: a real kube-apiserver + etcd (tests/cluster/), a real
# Redis and restatus. A KubernetesCluster gets a status, is deleted, is created again from the
# same manifest, and gets its status back.
#
#   hack/demo.sh            run the story and clean up
#   KEEP=1 hack/demo.sh     leave everything running and print how to use it
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

# Polls a command until it succeeds, for at most $1 seconds.
wait_for() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
		sleep 0.2
	done
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

say "Preparing: redis-server, the local control plane, restatus"
bash hack/prereqs.sh
cargo build --locked --quiet
restatus=$repo/target/debug/restatus
kubectl_bin=$repo/target/cluster/kubectl
helm=$repo/target/tools/helm

work=$(mktemp -d "${TMPDIR:-/tmp}/restatus-demo.XXXXXX")
pids=()
cleanup() {
	if [[ -n ${KEEP:-} ]]; then
		return
	fi
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

say "Starting the local control plane (kube-apiserver + etcd on 127.0.0.1)"
kubeconfig=$work/kubeconfig
tests/cluster/run.sh --kubeconfig "$kubeconfig" --log-file "$work/kube-cluster.log" >"$work/kube-cluster.out" &
pids+=($!)
wait_for 120 "the control plane" test -s "$kubeconfig"
kubectl() { "$kubectl_bin" --kubeconfig "$kubeconfig" "$@"; }
kubectl version | sed 's/^/  /'

say "Starting Redis"
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
	--dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_for 10 "redis" redis-cli -p "$redis_port" ping

say "Giving restatus the chart's ServiceAccount and least-privilege RBAC"
kubectl create namespace restatus >/dev/null
# Certificates come from files here and Redis runs outside the chart: the values only make
# the chart render; what is applied is its ServiceAccount, ClusterRole and binding.
placeholder_ca=$(printf -- '-----BEGIN CERTIFICATE-----\nunused\n-----END CERTIFICATE-----\n' | base64 -w0)
"$helm" template restatus charts/restatus --namespace restatus \
	--set certificates.mode=provided --set certificates.provided.secretName=unused \
	--set "certificates.provided.caBundle=$placeholder_ca" \
	--set redis.mode=external --set "redis.external.url=redis://127.0.0.1:$redis_port" \
	--set-json 'trackedResources=[{"group":"infra.example.com","resources":["kubernetesclusters"]}]' \
	--show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml |
	kubectl apply -f - | sed 's/^/  /'
token=$(kubectl --namespace restatus create token restatus --duration=2h)
restatus_kubeconfig=$work/restatus.kubeconfig
kubectl config view --raw --minify --flatten >"$restatus_kubeconfig"
KUBECONFIG=$restatus_kubeconfig "$kubectl_bin" config set-credentials restatus --token="$token" >/dev/null
KUBECONFIG=$restatus_kubeconfig "$kubectl_bin" config set-context --current --user=restatus >/dev/null
echo "  restatus runs as $(KUBECONFIG=$restatus_kubeconfig "$kubectl_bin" auth whoami -o jsonpath='{.status.userInfo.username}')"

say "Starting restatus"
"$restatus" certs --out "$work/certs" --host 127.0.0.1 --host localhost >/dev/null
port=$(free_port)
admin_port=$(free_port)
"$restatus" serve \
	--listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" \
	--redis-url "redis://127.0.0.1:$redis_port" \
	--tls-cert-file "$work/certs/tls.crt" --tls-key-file "$work/certs/tls.key" \
	--kubeconfig "$restatus_kubeconfig" >"$work/restatus.log" 2>&1 &
pids+=($!)
wait_for 30 "restatus /readyz" curl -fsS "http://127.0.0.1:$admin_port/readyz"
echo "  webhook https://127.0.0.1:$port/mutate, metrics http://127.0.0.1:$admin_port/metrics"

say "Registering the webhook and the KubernetesCluster CRD"
kubectl apply -f examples/kubernetescluster-crd.yaml
kubectl wait --for=condition=Established crd/kubernetesclusters.infra.example.com --timeout=60s
ca_bundle=$(base64 -w0 <"$work/certs/ca.crt")
kubectl apply -f - <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: restatus-demo
webhooks:
  - name: status.restatus.io
    clientConfig:
      url: https://127.0.0.1:$port/mutate
      caBundle: $ca_bundle
    rules:
      - apiGroups: ["infra.example.com"]
        apiVersions: ["*"]
        resources: ["kubernetesclusters", "kubernetesclusters/status"]
        operations: ["CREATE", "UPDATE", "DELETE"]
        scope: Namespaced
    namespaceSelector:
      matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, kube-node-lease]}
    failurePolicy: Ignore
    sideEffects: NoneOnDryRun
    reinvocationPolicy: Never
    timeoutSeconds: 5
    admissionReviewVersions: ["v1"]
YAML
kubectl create namespace demo >/dev/null
# The API server picks up a new webhook configuration within moments: probe with dry-runs.
webhook_called() {
	kubectl -n demo create --dry-run=server -f examples/kubernetescluster.yaml >/dev/null &&
		curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep -q 'outcome="dry_run"'
}
wait_for 30 "the webhook to be called" webhook_called

say "Creating a KubernetesCluster; its operator would now write .status"
kubectl -n demo apply -f examples/kubernetescluster.yaml
kubectl -n demo patch kubernetescluster prod-eu-1 --subresource=status --type=merge -p \
	'{"status":{"phase":"Running","clusterID":"c-7f3a9","apiServerURL":"https://203.0.113.10:6443","masterVersion":"1.31.4"}}' >/dev/null
kubectl -n demo get kubernetescluster prod-eu-1

say "restatus has recorded it in Redis"
key="restatus:rec:{default|infra.example.com|kubernetesclusters|demo|prod-eu-1}"
wait_for 10 "the record" sh -c "redis-cli -p $redis_port --raw hget '$key' status | grep -q 203.0.113.10"
echo "  $key"
echo "  status: $(redis-cli -p "$redis_port" --raw hget "$key" status)"

say "Deleting it (the status is gone from the cluster)"
kubectl -n demo delete kubernetescluster prod-eu-1
echo "  record kept for $(( ($(redis-cli -p "$redis_port" pttl "$key") + 86399999) / 86400000 )) days (the retention)"

say "Creating it again from the same manifest"
kubectl -n demo apply -f examples/kubernetescluster.yaml
restored() {
	[[ $(kubectl -n demo get kubernetescluster prod-eu-1 -o jsonpath='{.metadata.annotations.restatus\.io/restored-at}') != "" ]]
}
wait_for 30 "the status to come back" restored
kubectl -n demo get kubernetescluster prod-eu-1
echo
kubectl -n demo get kubernetescluster prod-eu-1 -o jsonpath='{"  status:      "}{.status}{"\n  annotations: "}{.metadata.annotations}{"\n"}'
latency=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" |
	awk '$1 == "restatus_restore_latency_seconds_sum" { printf "%.1f", $2 * 1000 }')
echo "  The status came back ${latency} ms after the create was admitted."
kubectl -n demo get events --field-selector reason=StatusRestored -o custom-columns=REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message

if [[ -n ${KEEP:-} ]]; then
	say "Still running (KEEP=1)"
	echo "  kubectl: $kubectl_bin --kubeconfig $kubeconfig"
	echo "  redis:   redis-cli -p $redis_port"
	echo "  logs:    $work/{restatus,kube-cluster,redis}.log"
	echo "  stop:    kill ${pids[*]}"
fi
say "Done"
