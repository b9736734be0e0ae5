package demo

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

func TestLocalize(t *testing.T) {
	mounts := map[string]string{
		"/var/run/falguard/credentials": "/tmp/run/vol",
		"/var/run/falguard":             "/tmp/run/parent",
	}
	tests := []struct{ in, want string }{
		{"--credentials-dir=/var/run/falguard/credentials", "--credentials-dir=/tmp/run/vol"},
		{"FALGUARD_CREDENTIALS_DIR=/var/run/falguard/credentials/", "FALGUARD_CREDENTIALS_DIR=/tmp/run/vol/"},
		{"/var/run/falguard/credentials/key", "/tmp/run/vol/key"},
		{"--other=/var/run/falguard/credentials2", "--other=/tmp/run/parent/credentials2"},
		{"--x=/var/run/falguardian", "--x=/var/run/falguardian"},
		{"--ops-listen=:4751", "--ops-listen=127.0.0.1:4751"},
		{"FALGUARD_OPS_LISTEN=:4751", "FALGUARD_OPS_LISTEN=127.0.0.1:4751"},
		{"--listen=127.0.0.1:4750", "--listen=127.0.0.1:4750"},
		{"run", "run"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := localize(tt.in, mounts); got != tt.want {
				t.Errorf("localize(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestResolveArgv(t *testing.T) {
	img := Image{Entrypoint: []string{"/bin/sidecar"}, Binaries: map[string]string{"falguard-sidecar": "/bin/sidecar"}}
	vars := map[string]string{"PORT": "4750"}
	tests := []struct {
		name    string
		c       corev1.Container
		want    string
		wantErr string
	}{
		{"args after the entrypoint", corev1.Container{Args: []string{"run", "--listen=127.0.0.1:$(PORT)"}}, "/bin/sidecar run --listen=127.0.0.1:4750", ""},
		{"command replaces the entrypoint", corev1.Container{Command: []string{"/usr/local/bin/falguard-sidecar", "run"}, Args: []string{"-v"}}, "/bin/sidecar run -v", ""},
		{"$$ escapes, unknown refs stay", corev1.Container{Args: []string{"$$(PORT)", "$(NOPE)"}}, "/bin/sidecar $(PORT) $(NOPE)", ""},
		{"unknown command", corev1.Container{Image: "x", Command: []string{"/bin/sh"}}, "", `command "/bin/sh" is not a binary`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveArgv(img, tt.c, vars)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, " ") != tt.want {
				t.Errorf("argv = %q, want %q", strings.Join(got, " "), tt.want)
			}
		})
	}
}

func TestSecretPayload(t *testing.T) {
	s := &corev1.Secret{Data: map[string][]byte{"key": []byte("k"), "policy.json": []byte("{}")}}
	tests := []struct {
		name    string
		src     corev1.SecretVolumeSource
		want    map[string]uint32
		wantErr bool
	}{
		{"every key with the default mode 0644", corev1.SecretVolumeSource{}, map[string]uint32{"key": 0o644, "policy.json": 0o644}, false},
		{"defaultMode", corev1.SecretVolumeSource{DefaultMode: ptr.To[int32](0o440)}, map[string]uint32{"key": 0o440, "policy.json": 0o440}, false},
		{"items rename and pick modes", corev1.SecretVolumeSource{Items: []corev1.KeyToPath{{Key: "key", Path: "fal/key", Mode: ptr.To[int32](0o400)}}}, map[string]uint32{"fal/key": 0o400}, false},
		{"a missing item fails", corev1.SecretVolumeSource{Items: []corev1.KeyToPath{{Key: "nope", Path: "x"}}}, nil, true},
		{"a missing optional item is skipped", corev1.SecretVolumeSource{Optional: ptr.To(true), Items: []corev1.KeyToPath{{Key: "nope", Path: "x"}}}, map[string]uint32{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := secretPayload(s, &tt.src)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("payload = %v, want %v", got, tt.want)
			}
			for p, mode := range tt.want {
				if uint32(got[p].Mode) != mode {
					t.Errorf("%s mode = %o, want %o", p, got[p].Mode, mode)
				}
			}
		})
	}
}

func TestContainerEnv(t *testing.T) {
	rp := &RunningPod{Pod: &corev1.Pod{}}
	rp.Pod.Name, rp.Pod.Namespace = "web-abc", "shop"
	rp.Pod.Labels = map[string]string{"app": "web"}
	c := corev1.Container{Env: []corev1.EnvVar{
		{Name: "A", Value: "1"},
		{Name: "B", Value: "$(A)-2"},
		{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		{Name: "IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
		{Name: "A", Value: "3"},
	}}
	env, err := rp.containerEnv(c)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	want := map[string]string{"A": "3", "B": "1-2", "NS": "shop", "IP": PodIP, "APP": "web", "HOSTNAME": "web-abc"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestRewriteWebhookToURL(t *testing.T) {
	mwc, err := ReadWebhookConfig("../../config/webhook")
	if err != nil {
		t.Fatalf("reading config/webhook: %v", err)
	}
	if err := RewriteWebhookToURL(mwc, "127.0.0.1", 9443); err != nil {
		t.Fatal(err)
	}
	for _, w := range mwc.Webhooks {
		if w.ClientConfig.Service != nil || w.ClientConfig.URL == nil || !strings.HasPrefix(*w.ClientConfig.URL, "https://127.0.0.1:9443/") {
			t.Errorf("webhook %s clientConfig = %+v, want a URL on https://127.0.0.1:9443/", w.Name, w.ClientConfig)
		}
	}
}
