{{/*
Full name prefix of every resource. A release named "falguard" (or anything
containing it) gives "falguard", so names match the kubectl-apply manifests.
At most 28 characters, so the longest name built on it,
"<prefix>-controller-manager-metrics-service", fits a Service's 63.
*/}}
{{- define "falguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 28 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 28 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 28 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "falguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 28 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "falguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: falguard
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "falguard.selectorLabels" . }}
{{- end -}}

{{/* Labels selecting the manager pods. */}}
{{- define "falguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "falguard.name" . }}
app.kubernetes.io/component: manager
{{- end -}}

{{- define "falguard.serviceAccountName" -}}
{{- include "falguard.fullname" . }}-controller-manager
{{- end -}}
{{- define "falguard.webhookConfigName" -}}
{{- include "falguard.fullname" . }}-mutating-webhook
{{- end -}}
{{- define "falguard.webhookServiceName" -}}
{{- include "falguard.fullname" . }}-webhook-service
{{- end -}}
{{- define "falguard.certSecretName" -}}
{{- include "falguard.fullname" . }}-webhook-server-cert
{{- end -}}
{{- define "falguard.certificateName" -}}
{{- include "falguard.fullname" . }}-serving-cert
{{- end -}}

{{/* image reference: repository, then @digest or :tag (default appVersion). */}}
{{- define "falguard.image" -}}
{{- $img := index . 0 -}}{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Flags carrying the sidecar defaults to the manager, which writes them into
every injected pod.
*/}}
{{- define "falguard.sidecarArgs" -}}
- --sidecar-image={{ include "falguard.image" (list .Values.sidecar.image .) }}
- --sidecar-image-pull-policy={{ .Values.sidecar.image.pullPolicy }}
{{- range $name, $value := .Values.sidecar.env }}
- --sidecar-env={{ $name }}={{ $value }}
{{- end }}
{{- with .Values.sidecar.resources }}
- --sidecar-cpu-request={{ include "falguard.quantity" .requests.cpu }}
- --sidecar-cpu-limit={{ include "falguard.quantity" .limits.cpu }}
- --sidecar-memory-request={{ include "falguard.quantity" .requests.memory }}
- --sidecar-memory-limit={{ include "falguard.quantity" .limits.memory }}
{{- end }}
- --sidecar-proxy-port={{ int .Values.sidecar.ports.proxy }}
- --sidecar-ops-port={{ int .Values.sidecar.ports.ops }}
{{- end -}}

{{/* A resource quantity for a manager flag: empty (or unset) becomes "0",
which the manager reads as "none", so both install paths pass the same. */}}
{{- define "falguard.quantity" -}}
{{- if or (kindIs "invalid" .) (eq (toString .) "") -}}
0
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* Fails rendering with a message when values contradict each other. */}}
{{- define "falguard.validate" -}}
{{- if or (eq (int .Values.webhook.port) (int .Values.metrics.port)) (eq (int .Values.webhook.port) 8081) (eq (int .Values.metrics.port) 8081) -}}
{{- fail (printf "webhook.port (%v) and metrics.port (%v) must differ from each other and from the health port 8081" .Values.webhook.port .Values.metrics.port) -}}
{{- end -}}
{{- if eq (int .Values.sidecar.ports.proxy) (int .Values.sidecar.ports.ops) -}}
{{- fail (printf "sidecar.ports.proxy and sidecar.ports.ops are both %v: give the sidecar's app API and its ops listener different ports" .Values.sidecar.ports.proxy) -}}
{{- end -}}
{{- end -}}
