{{/* Names and labels, as `helm create` makes them. */}}
{{- define "botfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "botfleet.fullname" -}}
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

{{- define "botfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "botfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "botfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "botfleet.labels" -}}
helm.sh/chart: {{ include "botfleet.chart" . }}
{{ include "botfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: botfleet
{{- end }}

{{- define "botfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "botfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "botfleet.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* Where the Secret's keys are mounted as files. */}}
{{- define "botfleet.secretsDir" -}}/var/run/secrets/botfleet{{- end }}

{{/* Name of the Secret the pods use: yours, or the chart's; empty when none. */}}
{{- define "botfleet.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{ .Values.secrets.existingSecret }}
{{- else if .Values.secrets.values -}}
{{ include "botfleet.fullname" . }}
{{- end }}
{{- end }}

{{/*
Checks values that the schema cannot relate to each other; each failure names
the value to set. Included by the Deployment, so `helm template` and `helm
install` stop with the message.
*/}}
{{- define "botfleet.validate" -}}
{{- $secret := include "botfleet.secretName" . -}}
{{- if and (eq .Values.store.backend "memory") (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "botfleet: store.backend=memory keeps state inside one pod: with replicaCount > 1 or autoscaling.enabled set store.backend=redis (and the Redis URL in the Secret)" -}}
{{- end -}}
{{- if eq .Values.store.backend "redis" -}}
{{- if not $secret -}}
{{- fail (printf "botfleet: store.backend=redis reads the Redis URL from a Secret: set secrets.existingSecret to a Secret with the key %q, or secrets.values.%s" .Values.secrets.redisUrlKey .Values.secrets.redisUrlKey) -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (not (get .Values.secrets.values .Values.secrets.redisUrlKey)) -}}
{{- fail (printf "botfleet: store.backend=redis needs the Redis URL: secrets.values has no key %q (set it, or use secrets.existingSecret)" .Values.secrets.redisUrlKey) -}}
{{- end -}}
{{- end -}}
{{- if .Values.admin.bootstrapKey -}}
{{- if not $secret -}}
{{- fail (printf "botfleet: admin.bootstrapKey=true reads the key from a Secret: set secrets.existingSecret to a Secret with the key %q, or secrets.values.%s" .Values.secrets.adminKeyKey .Values.secrets.adminKeyKey) -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (not (get .Values.secrets.values .Values.secrets.adminKeyKey)) -}}
{{- fail (printf "botfleet: admin.bootstrapKey=true needs the key: secrets.values has no key %q (set it, or use secrets.existingSecret)" .Values.secrets.adminKeyKey) -}}
{{- end -}}
{{- end -}}
{{- if le (int .Values.shutdown.graceSeconds) (int .Values.shutdown.delaySeconds) -}}
{{- fail (printf "botfleet: shutdown.graceSeconds (%d) must be more than shutdown.delaySeconds (%d): the grace counts from SIGTERM, the delay included, and in-flight activities finish after the delay" (int .Values.shutdown.graceSeconds) (int .Values.shutdown.delaySeconds)) -}}
{{- end -}}
{{- $owned := dict "server" (list "listen" "admin_listen" "shutdown_delay" "shutdown_grace") "store" (list "backend" "redis_urls" "redis_urls_file" "redis_urls_env" "redis_cluster") "admin" (list "bootstrap_key_file") -}}
{{- range $section, $keys := $owned -}}
{{- $given := get $.Values.config $section -}}
{{- if kindIs "map" $given -}}
{{- range $keys -}}
{{- if hasKey $given . -}}
{{- fail (printf "botfleet: config.%s.%s is set by the chart (from ports, store, secrets and admin values): remove it from config" $section .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.workloadIdentity.enabled (not .Values.workloadIdentity.clientId) -}}
{{- fail "botfleet: workloadIdentity.enabled=true needs workloadIdentity.clientId (the managed identity's client id)" -}}
{{- end -}}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) -}}
{{- fail "botfleet: httpRoute.enabled=true needs httpRoute.parentRefs (the Gateway to attach to)" -}}
{{- end -}}
{{- end }}

{{/*
The configuration as a dict: the user's config with the keys the chart owns.
*/}}
{{- define "botfleet.configDict" -}}
{{- $c := deepCopy .Values.config -}}
{{- $server := get $c "server" | default dict -}}
{{- $_ := set $server "listen" (printf "0.0.0.0:%d" (int .Values.ports.public)) -}}
{{- $_ := set $server "admin_listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- $_ := set $server "shutdown_delay" (printf "%ds" (int .Values.shutdown.delaySeconds)) -}}
{{- $_ := set $server "shutdown_grace" (printf "%ds" (int .Values.shutdown.graceSeconds)) -}}
{{- $_ := set $c "server" $server -}}
{{- $store := get $c "store" | default dict -}}
{{- $_ := set $store "backend" .Values.store.backend -}}
{{- if eq .Values.store.backend "redis" -}}
{{- /* The URL itself is a file of the mounted Secret, never in the ConfigMap. */ -}}
{{- $_ := set $store "redis_urls_file" (printf "%s/%s" (include "botfleet.secretsDir" .) .Values.secrets.redisUrlKey) -}}
{{- $_ := set $store "redis_cluster" .Values.store.redisCluster -}}
{{- end -}}
{{- $_ := set $c "store" $store -}}
{{- if .Values.admin.bootstrapKey -}}
{{- $admin := get $c "admin" | default dict -}}
{{- $_ := set $admin "bootstrap_key_file" (printf "%s/%s" (include "botfleet.secretsDir" .) .Values.secrets.adminKeyKey) -}}
{{- $_ := set $c "admin" $admin -}}
{{- end -}}
{{- toJson $c -}}
{{- end }}

{{/*
TOML of a dict (botfleet.toml). Helm's toToml writes every number as a float
(YAML values are parsed through JSON), which botfleet refuses for integer keys,
so this writes whole numbers as integers. Tables become [section] headers,
lists of tables [[section]] blocks, anything deeper inline tables. A null has
no TOML form and fails, naming the key.
*/}}
{{- define "botfleet.toml" -}}
{{- $root := . -}}
{{- range $k := keys $root | sortAlpha }}
{{- $v := get $root $k }}
{{- if not (or (kindIs "map" $v) (and (kindIs "slice" $v) $v (kindIs "map" (first $v)))) }}
{{ include "botfleet.tomlKey" $k }} = {{ include "botfleet.tomlValue" (dict "v" $v "path" $k) }}
{{- end }}
{{- end }}
{{- range $k := keys $root | sortAlpha }}
{{- $v := get $root $k }}
{{- if kindIs "map" $v }}

[{{ include "botfleet.tomlKey" $k }}]
{{- range $k2 := keys $v | sortAlpha }}
{{ include "botfleet.tomlKey" $k2 }} = {{ include "botfleet.tomlValue" (dict "v" (get $v $k2) "path" (printf "%s.%s" $k $k2)) }}
{{- end }}
{{- else if and (kindIs "slice" $v) $v (kindIs "map" (first $v)) }}
{{- range $i, $item := $v }}

[[{{ include "botfleet.tomlKey" $k }}]]
{{- if not (kindIs "map" $item) }}
{{- fail (printf "botfleet: config.%s[%d] must be a table like the other entries" $k $i) }}
{{- end }}
{{- range $k2 := keys $item | sortAlpha }}
{{ include "botfleet.tomlKey" $k2 }} = {{ include "botfleet.tomlValue" (dict "v" (get $item $k2) "path" (printf "%s[%d].%s" $k $i $k2)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "botfleet.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end }}

{{- define "botfleet.tomlValue" -}}
{{- $v := .v -}}
{{- $path := .path -}}
{{- if kindIs "string" $v -}}
{{ toJson $v }}
{{- else if kindIs "bool" $v -}}
{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "botfleet.tomlValue" (dict "v" $e "path" (printf "%s[%d]" $path $i)) }}{{ end }}]
{{- else if kindIs "map" $v -}}
{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "botfleet.tomlKey" $k }} = {{ include "botfleet.tomlValue" (dict "v" (get $v $k) "path" (printf "%s.%s" $path $k)) }}{{ end }} }
{{- else -}}
{{- fail (printf "botfleet: config.%s is null; TOML has no null: remove the key or give it a value" $path) -}}
{{- end -}}
{{- end }}
