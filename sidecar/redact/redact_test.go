package redact

import (
	"bytes"
	"strings"
	"testing"
)

func TestWriterMasksAcrossChunks(t *testing.T) {
	const secret = "s3cr3t-value"
	for _, tc := range []struct {
		name   string
		chunks []string
		want   string
	}{
		{"none", []string{"data: {}\n\n"}, "data: {}\n\n"},
		{"whole", []string{`{"auth":"Key kid:s3cr3t-value"}`}, `{"auth":"Key kid:************"}`},
		{"split", []string{`Key kid:s3cr`, `3t-val`, `ue tail`}, `Key kid:************ tail`},
		{"twice", []string{"s3cr3t-values3cr3t-value"}, "************************"},
		{"prefix only", []string{"s3cr3t-", "nope"}, "s3cr3t-nope"},
		{"prefix at end", []string{"abc s3c"}, "abc s3c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			w := NewWriter(&out, secret)
			for _, c := range tc.chunks {
				if _, err := w.Write([]byte(c)); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want || out.Len() != len(strings.Join(tc.chunks, "")) {
				t.Fatalf("got %q, want %q", out.String(), tc.want)
			}
		})
	}
}

func TestWriterDoesNotHoldBackEvents(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, "s3cr3t")
	_, _ = w.Write([]byte("data: {\"x\":1}\n\n"))
	if out.String() != "data: {\"x\":1}\n\n" {
		t.Fatalf("event held back: %q", out.String())
	}
}

func TestString(t *testing.T) {
	if got := String("Key kid:abc", "abc"); got != "Key kid:***" {
		t.Fatal(got)
	}
}
