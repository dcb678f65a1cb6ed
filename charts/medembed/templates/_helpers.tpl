{{/* Names, labels and image references shared by every template. */}}

{{- define "medembed.fullname" -}}
{{- if contains "medembed" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-medembed" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "medembed.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: medembed
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "gateway") */}}
{{- define "medembed.selector" -}}
app.kubernetes.io/name: medembed-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{/* An image reference: (dict "ctx" $ "image" .Values.images.gateway) */}}
{{- define "medembed.image" -}}
{{- $repo := .image.repository -}}
{{- if .ctx.Values.imageRegistry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .ctx.Values.imageRegistry) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "medembed.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Scheduling settings of one component's values. */}}
{{- define "medembed.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* The workers' CA Secret (worker TLS): the value, else <fullname>-worker-ca. */}}
{{- define "medembed.workerCaSecret" -}}
{{- default (printf "%s-worker-ca" (include "medembed.fullname" .)) .Values.workerTls.caSecretName -}}
{{- end -}}
