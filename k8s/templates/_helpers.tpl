{{/* Resource name: the release name, or release-chart when they differ. */}}
{{- define "iot-anomaly.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "iot-anomaly.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "iot-anomaly.labels" -}}
{{ include "iot-anomaly.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "iot-anomaly.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "iot-anomaly.modelClaim" -}}
{{- if .Values.modelVolume.create -}}
{{ include "iot-anomaly.fullname" . }}-models
{{- else -}}
{{ required "modelVolume.existingClaim is required when modelVolume.create is false" .Values.modelVolume.existingClaim }}
{{- end -}}
{{- end -}}

{{/* Pod and container security settings shared by the scorer and the trainer. */}}
{{- define "iot-anomaly.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "iot-anomaly.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
