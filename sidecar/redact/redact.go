// Package redact masks secrets in a byte stream as it passes through, so a
// fal response that echoes the request (and with it the key) never carries
// the key to the app. The mask has the secret's length, so Content-Length and
// framing stay valid; bytes are held back only while they could be the start
// of a secret, so SSE events are not delayed.
package redact

import (
	"bytes"
	"io"
)

// Writer masks every occurrence of secret in what is written through it.
// Flush writes out the held-back tail; call it when the stream ends.
type Writer struct {
	w      io.Writer
	secret []byte
	mask   []byte
	buf    []byte
}

// NewWriter returns w itself if secret is empty.
func NewWriter(w io.Writer, secret string) *Writer {
	return &Writer{w: w, secret: []byte(secret), mask: bytes.Repeat([]byte("*"), len(secret))}
}

// Write masks and forwards p, holding back a possible secret prefix.
func (r *Writer) Write(p []byte) (int, error) {
	if len(r.secret) == 0 {
		return r.w.Write(p)
	}
	if len(r.buf) == 0 && !bytes.Contains(p, r.secret) {
		// Fast path, no copy: nothing to mask, hold back a possible prefix.
		keep := heldBack(p, r.secret)
		if _, err := r.w.Write(p[:len(p)-keep]); err != nil {
			return 0, err
		}
		r.buf = append(r.buf, p[len(p)-keep:]...)
		return len(p), nil
	}
	r.buf = append(r.buf, p...)
	for {
		i := bytes.Index(r.buf, r.secret)
		if i < 0 {
			break
		}
		copy(r.buf[i:], r.mask)
	}
	keep := heldBack(r.buf, r.secret)
	out := r.buf[:len(r.buf)-keep]
	if len(out) > 0 {
		if _, err := r.w.Write(out); err != nil {
			return 0, err
		}
	}
	r.buf = append(r.buf[:0], r.buf[len(r.buf)-keep:]...)
	return len(p), nil
}

// Flush writes any held-back bytes (they cannot become a secret any more).
func (r *Writer) Flush() error {
	if len(r.buf) == 0 {
		return nil
	}
	_, err := r.w.Write(r.buf)
	r.buf = r.buf[:0]
	return err
}

// heldBack is the length of the longest suffix of b that is a proper prefix
// of secret.
func heldBack(b, secret []byte) int {
	n := min(len(b), len(secret)-1)
	for ; n > 0; n-- {
		if bytes.HasPrefix(secret, b[len(b)-n:]) {
			return n
		}
	}
	return 0
}

// String masks secret in s (for headers).
func String(s, secret string) string {
	if secret == "" {
		return s
	}
	return string(bytes.ReplaceAll([]byte(s), []byte(secret), bytes.Repeat([]byte("*"), len(secret))))
}
