{{/*
Names
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "restatus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else "<release>-<name>", or just
the release name when it already contains the chart name. Truncated to 63 characters
(DNS labels).
*/}}
{{- define "restatus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "restatus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ServiceAccount restatus runs as. */}}
{{- define "restatus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "restatus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the self-managed CA (filled by restatus). */}}
{{- define "restatus.caSecretName" -}}
{{- printf "%s-ca" (include "restatus.fullname" . | trunc 60 | trimSuffix "-") }}
{{- end }}

{{/* The Secret holding the serving certificate in cert-manager mode. */}}
{{- define "restatus.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "provided" }}
{{- .Values.certificates.provided.secretName }}
{{- else }}
{{- printf "%s-tls" (include "restatus.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* The serving Certificate in cert-manager mode. */}}
{{- define "restatus.servingCertificateName" -}}
{{- printf "%s-serving" (include "restatus.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
The bundled Redis StatefulSet and its Service. At most 52 characters: the StatefulSet's
controller-revision-hash label is "<name>-<10 characters>".
*/}}
{{- define "restatus.redisName" -}}
{{- printf "%s-redis" (include "restatus.fullname" . | trunc 46 | trimSuffix "-") }}
{{- end }}

{{/* The in-cluster host name of the restatus Service, without the cluster domain. */}}
{{- define "restatus.serviceHost" -}}
{{- printf "%s.%s.svc" (include "restatus.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
Labels
*/}}

{{/* Labels every object of the release carries. */}}
{{- define "restatus.labels" -}}
helm.sh/chart: {{ include "restatus.chart" . }}
{{ include "restatus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: restatus
{{- end }}

{{/* Labels that identify the release. */}}
{{- define "restatus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "restatus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of the restatus webhook objects; the selector labels plus the component. */}}
{{- define "restatus.webhook.labels" -}}
{{ include "restatus.labels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "restatus.webhook.selectorLabels" -}}
{{ include "restatus.selectorLabels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* Labels of the bundled Redis objects. */}}
{{- define "restatus.redis.labels" -}}
helm.sh/chart: {{ include "restatus.chart" . }}
{{ include "restatus.redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.redis.bundled.image.tag | toString | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: restatus
{{- end }}

{{/*
Labels of the Redis pod: no chart version, so that a chart upgrade alone does not restart
Redis.
*/}}
{{- define "restatus.redis.podLabels" -}}
{{ include "restatus.redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.redis.bundled.image.tag | toString | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: restatus
{{- end }}

{{- define "restatus.redis.selectorLabels" -}}
{{ include "restatus.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{/*
Images
*/}}

{{/* repository[:tag][@digest] from an image value: (dict "image" .Values.image "default" tag) */}}
{{- define "restatus.imageRef" -}}
{{- $tag := .image.tag | default .default | toString }}
{{- $ref := .image.repository }}
{{- if $tag }}
{{- $ref = printf "%s:%s" $ref $tag }}
{{- end }}
{{- if .image.digest }}
{{- $ref = printf "%s@%s" $ref .image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
Redis
*/}}

{{/* The Secret restatus reads an external Redis's URL from. */}}
{{- define "restatus.redisUrlSecretName" -}}
{{- .Values.redis.external.existingSecret | default (include "restatus.redisName" .) }}
{{- end }}

{{/* The key of the URL in that Secret. */}}
{{- define "restatus.redisUrlSecretKey" -}}
{{- if .Values.redis.external.existingSecret }}
{{- .Values.redis.external.key }}
{{- else }}
{{- "url" }}
{{- end }}
{{- end }}

{{/* The URL of the bundled Valkey: its Service; the password comes separately. */}}
{{- define "restatus.bundledRedisUrl" -}}
{{- printf "redis://%s.%s.svc:6379" (include "restatus.redisName" .) .Release.Namespace }}
{{- end }}

{{/*
The Secret (key "password") both the bundled Valkey and restatus read Valkey's password
from: the same reference on both sides, so that they cannot disagree.
*/}}
{{- define "restatus.bundledPasswordSecretName" -}}
{{- .Values.redis.bundled.existingSecret | default (include "restatus.redisName" .) }}
{{- end }}

{{/*
What the Redis connection depends on: a change rolls the restatus pods (and the bundled
Valkey's), which read it only at start. A password given as a value is in it as a hash; a
generated one never changes and is left out.
*/}}
{{- define "restatus.redisChecksum" -}}
{{- $r := .Values.redis }}
{{- if eq $r.mode "bundled" }}
{{- printf "bundled|%s|%s|%s" (include "restatus.redisName" .) $r.bundled.existingSecret ($r.bundled.password | sha256sum) | sha256sum }}
{{- else }}
{{- toJson $r.external | sha256sum }}
{{- end }}
{{- end }}

{{/*
The restatus container's args for an external Redis: ACL user, TLS files, topology.
*/}}
{{- define "restatus.externalRedisArgs" -}}
{{- $e := .Values.redis.external }}
{{- if $e.username }}
- {{ printf "--redis-username=%s" ($e.username) | quote }}
{{- end }}
{{- if or $e.tls.ca.secretName $e.tls.ca.configMapName }}
- {{ printf "--redis-ca-file=/etc/restatus/redis-ca/%s" $e.tls.ca.key | quote }}
{{- end }}
{{- if $e.tls.clientCertificate.secretName }}
- "--redis-client-cert-file=/etc/restatus/redis-client/tls.crt"
- "--redis-client-key-file=/etc/restatus/redis-client/tls.key"
{{- end }}
{{- if ne $e.topology "standalone" }}
- {{ printf "--redis-topology=%s" ($e.topology) | quote }}
{{- end }}
{{- if eq $e.topology "sentinel" }}
- {{ printf "--redis-sentinel-master=%s" ($e.sentinel.masterName) | quote }}
- {{ printf "--redis-sentinels=%s" (join "," $e.sentinel.sentinels) | quote }}
{{- if $e.sentinel.password.existingSecret }}
- "--redis-sentinel-password-file=/etc/restatus/redis-sentinel/password"
{{- end }}
{{- end }}
{{- if and (eq $e.topology "cluster") $e.cluster.nodes }}
- {{ printf "--redis-cluster-nodes=%s" (join "," $e.cluster.nodes) | quote }}
{{- end }}
{{- end }}

{{/*
Tracked resources
*/}}

{{/*
Resources that must never be tracked, and why. Checked by name in every API group.
*/}}
{{- define "restatus.forbiddenResources" -}}
pods: "pods are written constantly by the kubelet and the scheduler, and their status describes the containers of one incarnation on one node; a recreated pod must not claim them"
nodes: "node status is rewritten by the kubelet all the time and describes a machine as it is now, not a fact to carry over"
leases: "leases are renewed every few seconds by every kubelet and leader election, and have no status"
events: "events are the busiest resource of a cluster and have no status"
endpoints: "endpoints are rewritten on every pod change, are derived from other objects, and have no status"
endpointslices: "endpointslices are rewritten on every pod change, are derived from other objects, and have no status"
tokenreviews: "token reviews are create-only requests that are never stored; a webhook on them only adds latency to every authentication"
subjectaccessreviews: "access reviews are create-only requests that are never stored; a webhook on them only adds latency to every authorization check (restatus itself creates them)"
localsubjectaccessreviews: "access reviews are create-only requests that are never stored; a webhook on them only adds latency to every authorization check"
selfsubjectaccessreviews: "access reviews are create-only requests that are never stored; a webhook on them only adds latency to every authorization check"
selfsubjectrulesreviews: "rules reviews are create-only requests that are never stored; a webhook on them only adds latency"
selfsubjectreviews: "self subject reviews are create-only requests that are never stored; a webhook on them only adds latency"
certificatesigningrequests: "the status of a certificate signing request holds the approval and the issued certificate of one request; carrying it over to a new request would be wrong and unsafe"
{{- end }}

{{/*
trackedResources, checked and normalised, as JSON {"entries": [{group, resources, scope}]}.
Fails with a message naming the entry and the reason on anything that must not be tracked.
*/}}
{{- define "restatus.trackedResources" -}}
{{- $forbidden := include "restatus.forbiddenResources" . | fromYaml }}
{{- $entries := list }}
{{- $seen := dict }}
{{- if not .Values.trackedResources }}
{{- fail "trackedResources is empty: list at least one resource for restatus to track" }}
{{- end }}
{{- range $i, $entry := .Values.trackedResources }}
{{- $group := $entry.group | default "" | toString }}
{{- $scope := $entry.scope | default "*" | toString }}
{{- if contains "*" $group }}
{{- fail (printf "trackedResources[%d]: group %q: wildcards are not allowed; name each API group" $i $group) }}
{{- end }}
{{- if not $entry.resources }}
{{- fail (printf "trackedResources[%d] (group %q): resources is empty" $i $group) }}
{{- end }}
{{- range $entry.resources }}
{{- $resource := . | toString }}
{{- if contains "*" $resource }}
{{- fail (printf "trackedResources[%d]: resource %q: wildcards are not allowed; name each resource (restatus would be called for every write of every type)" $i $resource) }}
{{- end }}
{{- if contains "/" $resource }}
{{- fail (printf "trackedResources[%d]: resource %q: name the resource without a subresource; the chart adds %s/status itself" $i $resource (splitList "/" $resource | first)) }}
{{- end }}
{{- if hasKey $forbidden $resource }}
{{- fail (printf "trackedResources[%d]: %q cannot be tracked: %s" $i $resource (get $forbidden $resource)) }}
{{- end }}
{{- $key := printf "%s/%s" $group $resource }}
{{- if hasKey $seen $key }}
{{- fail (printf "trackedResources[%d]: resource %q in group %q is listed twice" $i $resource $group) }}
{{- end }}
{{- $_ := set $seen $key true }}
{{- end }}
{{- $entries = append $entries (dict "group" $group "resources" $entry.resources "scope" $scope "policy" ($entry.policy | default "enabled")) }}
{{- end }}
{{- dict "entries" $entries | toJson }}
{{- end }}

{{/*
Checks of values that the schema cannot express; included by the templates that depend on
them.
*/}}
{{- define "restatus.validate" -}}
{{- $c := .Values.certificates }}
{{- if eq $c.mode "provided" }}
{{- if not $c.provided.secretName }}
{{- fail "certificates.provided.secretName is required when certificates.mode is provided: the name of a kubernetes.io/tls Secret in the release namespace" }}
{{- end }}
{{- if not $c.provided.caBundle }}
{{- fail "certificates.provided.caBundle is required when certificates.mode is provided: the base64-encoded PEM of the CA that signed the serving certificate" }}
{{- end }}
{{- if not (contains "-----BEGIN CERTIFICATE-----" (include "restatus.caBundle" .)) }}
{{- fail "certificates.provided.caBundle is not a base64-encoded PEM certificate (it must decode to -----BEGIN CERTIFICATE-----...)" }}
{{- end }}
{{- end }}
{{- if eq .Values.redis.mode "external" }}
{{- if and .Values.redis.external.url .Values.redis.external.existingSecret }}
{{- fail "redis.external.url and redis.external.existingSecret are both set: set one of them" }}
{{- end }}
{{- if not (or .Values.redis.external.url .Values.redis.external.existingSecret) }}
{{- fail "redis.mode is external: set redis.external.url, or redis.external.existingSecret (and redis.external.key)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The provided CA bundle as decoded PEM; a PEM value is taken as it is. */}}
{{- define "restatus.caBundle" -}}
{{- $v := .Values.certificates.provided.caBundle | trim }}
{{- if hasPrefix "-----BEGIN" $v }}
{{- $v }}
{{- else }}
{{- $v | b64dec }}
{{- end }}
{{- end }}

{{/* A listener's address for --listen and --admin-listen: (list $ port). IPv6 addresses in
brackets. */}}
{{- define "restatus.listenAddress" -}}
{{- $root := index . 0 }}
{{- $port := index . 1 }}
{{- $addr := $root.Values.listenAddress }}
{{- if contains ":" $addr }}
{{- printf "[%s]:%d" $addr (int $port) }}
{{- else }}
{{- printf "%s:%d" $addr (int $port) }}
{{- end }}
{{- end }}
