{{/* The chart's name, overridable. */}}
{{- define "ve-migrate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects: the release name, with the chart's name when it lacks it. */}}
{{- define "ve-migrate.fullname" -}}
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

{{/* Cluster-scoped objects (ClusterRoles, their bindings) are shared by all namespaces: the release
namespace goes into their names so two releases of the same name never collide. */}}
{{- define "ve-migrate.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "ve-migrate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ve-migrate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ve-migrate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ve-migrate
{{- end }}

{{- define "ve-migrate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ve-migrate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ve-migrate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ve-migrate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ve-migrate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" when kopf peering is on: more than one replica, or asked for. */}}
{{- define "ve-migrate.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "ve-migrate.peeringName" -}}
{{- default (include "ve-migrate.fullname" .) .Values.peering.name }}
{{- end }}

{{/* The namespaces whose Secrets the operator may read, as a JSON list. */}}
{{- define "ve-migrate.secretNamespaces" -}}
{{- if .Values.rbac.secretNamespaces }}
{{- .Values.rbac.secretNamespaces | uniq | toJson }}
{{- else if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* What the operator does to its own kinds, in every namespace it watches (see operator/vemigrate/kube/
and handlers.py): kopf lists and watches both kinds and patches them (its finalizer and its annotations
under vemigrate.io/); the operator reads hosts, writes status through the status subresource only,
and posts Events. Nothing is ever created, updated or deleted. */}}
{{- define "ve-migrate.kindRules" -}}
- apiGroups: [vemigrate.io]
  resources: [virtualenvironmentmigrations]
  verbs: [list, watch, patch]
- apiGroups: [vemigrate.io]
  resources: [hypervisorhosts]
  verbs: [get, list, watch, patch]
- apiGroups: [vemigrate.io]
  resources: [virtualenvironmentmigrations/status, hypervisorhosts/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
