{{/*
Names, labels and images (the conventions of cert-manager's chart).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "gantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name: fullnameOverride, else "<release>-<chart>", or just the release name
when it already contains the chart name (so `helm install gantry ...` gives "gantry").
*/}}
{{- define "gantry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's objects (Deployment, ServiceAccount, RBAC, PDB): "<fullname>-operator". */}}
{{- define "gantry.operatorName" -}}
{{- printf "%s-operator" (include "gantry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The metrics Service: "<fullname>-operator-metrics" (deploy/monitoring's alerts use job
     gantry-operator-metrics; the ServiceMonitor template keeps that job label). */}}
{{- define "gantry.metricsServiceName" -}}
{{- printf "%s-metrics" (include "gantry.operatorName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gantry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "gantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object the chart renders. */}}
{{- define "gantry.labels" -}}
{{ include "gantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gantry
helm.sh/chart: {{ include "gantry.chart" . }}
{{- end -}}

{{/* The operator pods' selector: the chart's selector labels plus the component. */}}
{{- define "gantry.operatorSelectorLabels" -}}
{{ include "gantry.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "gantry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gantry.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The peering object's name (the operator's --peering). */}}
{{- define "gantry.peeringName" -}}
{{- default (include "gantry.fullname" .) .Values.peering.name -}}
{{- end -}}

{{/*
An image reference from {registry, repository, tag, digest}; global.imageRegistry (the
cluster's mirror) replaces the image's own registry. Call with
(dict "image" .Values.image "global" .Values.global "default" .Chart.AppVersion).
*/}}
{{- define "gantry.image" -}}
{{- $registry := default .image.registry .global.imageRegistry -}}
{{- $repository := required "image repository is required" .image.repository -}}
{{- $ref := ternary (printf "%s/%s" $registry $repository) $repository (ne $registry "") -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (required (printf "no tag for image %s" $ref) (default .default .image.tag | toString)) -}}
{{- end -}}
{{- end -}}

{{/* Pull secrets of the operator pods: global.imagePullSecrets then imagePullSecrets. */}}
{{- define "gantry.imagePullSecrets" -}}
{{- $names := concat .Values.global.imagePullSecrets .Values.imagePullSecrets | uniq -}}
{{- if $names -}}
imagePullSecrets:
{{- range $names }}
  - name: {{ . | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The watched namespaces, sorted and de-duplicated (empty: every namespace). */}}
{{- define "gantry.watchNamespaces" -}}
{{- .Values.watch.namespaces | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/*
The cluster policy file (gantry-operator --policy), from residency, networkPolicy and
runtime/global values. The operator's own pods are added to networkPolicy.operator when that
list is empty, so the autoscaler can scrape the runtime pods it protects.
*/}}
{{- define "gantry.policy" -}}
{{- $np := deepCopy .Values.networkPolicy -}}
{{- if not $np.operator -}}
{{- $peer := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) "podSelector" (dict "matchLabels" (include "gantry.operatorSelectorLabels" . | fromYaml)) -}}
{{- $_ := set $np "operator" (list $peer) -}}
{{- end -}}
{{- if (.Values.gateway).enabled -}}
{{- /* The gantry-gateway runs in this release's namespace: with it on, clients reach the
runtime pods only through it (docs/security.md). */ -}}
{{- $_ := set $np "gateway" (dict "enabled" true "namespace" .Release.Namespace) -}}
{{- end -}}
{{- $runtime := dict "imagePullSecrets" (concat .Values.global.imagePullSecrets .Values.runtime.imagePullSecrets | uniq) -}}
{{- if .Values.runtime.image.repository -}}
{{- $_ := set $runtime "image" (include "gantry.image" (dict "image" .Values.runtime.image "global" .Values.global "default" "")) -}}
{{- end -}}
{{- $pool := dict "enabled" .Values.inferencePool.enabled -}}
{{- if .Values.inferencePool.endpointPicker.name -}}
{{- $_ := set $pool "endpointPicker" .Values.inferencePool.endpointPicker -}}
{{- end -}}
{{- $multiNode := dict "enabled" .Values.leaderWorkerSet.enabled "exclusiveTopologyKey" .Values.leaderWorkerSet.exclusiveTopologyKey -}}
{{- $policy := dict "residency" .Values.residency "networkPolicy" $np "multiNode" $multiNode "inferencePool" $pool "runtime" $runtime -}}
{{- toYaml $policy -}}
{{- end -}}

{{/* The gateway's objects: "<fullname>-gateway". */}}
{{- define "gantry.gatewayName" -}}
{{- printf "%s-gateway" (include "gantry.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The gateway pods' selector (the operator's autoscaler finds them by the component). */}}
{{- define "gantry.gatewaySelectorLabels" -}}
{{ include "gantry.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* Namespaces the gateway serves: gateway.namespaces, else watch.namespaces (empty: all). */}}
{{- define "gantry.gatewayNamespaces" -}}
{{- default .Values.watch.namespaces .Values.gateway.namespaces | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* Namespace of the tenant Secrets. */}}
{{- define "gantry.tenantNamespace" -}}
{{- default .Release.Namespace .Values.gateway.tenantNamespace -}}
{{- end -}}

{{/* The gateway's rules where it serves models (a ClusterRole, or a Role per namespace). */}}
{{- define "gantry.gatewayRules" -}}
# ModelDeployments: served name, replicas and routing, from a watch.
- apiGroups: [gantry.dev]
  resources: [modeldeployments]
  verbs: [list, watch]
# Scale from zero: replicas 0 -> 1 through the scale subresource.
- apiGroups: [gantry.dev]
  resources: [modeldeployments/scale]
  verbs: [patch]
# Runtime pods: Ready ones and their addresses, from a watch.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
{{- end -}}
