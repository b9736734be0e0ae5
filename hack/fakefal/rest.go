package fakefal

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultTokenTTL is the token_expiration used when a /tokens/ request omits it
// (fal's clients ask for 120 s).
const DefaultTokenTTL = 120 * time.Second

const maxUploadBytes = 256 << 20

type upload struct {
	id          string
	fileName    string
	contentType string
	data        []byte
	parts       map[int][]byte
	complete    bool
}

// serveRest serves rest.fal.ai and rest.alpha.fal.ai: tokens, storage, and
// the fake CDN the storage flow uploads to (under /__cdn/).
func (s *Server) serveRest(w http.ResponseWriter, r *http.Request) {
	host := recFrom(r).call.Host
	p := r.URL.Path
	switch {
	case p == "/tokens/" || p == "/tokens":
		if r.Method != http.MethodPost {
			writeDetail(w, http.StatusMethodNotAllowed, "Method Not Allowed")
			return
		}
		s.serveToken(w, r, host)
	case strings.HasPrefix(p, "/storage/"):
		if r.Method != http.MethodPost {
			writeDetail(w, http.StatusMethodNotAllowed, "Method Not Allowed")
			return
		}
		if _, ok := s.authenticate(w, r, host, false); !ok {
			return
		}
		switch p {
		case "/storage/upload/initiate", "/storage/upload/initiate-multipart":
			s.serveInitiate(w, r, host)
		case "/storage/upload/complete-multipart":
			s.serveCompleteMultipart(w, r, host)
		case "/storage/auth/token":
			writeJSON(w, http.StatusOK, map[string]any{
				"token":      randHex(24),
				"token_type": "Bearer",
				"base_url":   s.URL(host) + "/__cdn",
				"expires_at": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
			})
		default:
			writeDetail(w, http.StatusNotFound, "Not Found")
		}
	case strings.HasPrefix(p, "/__cdn/"):
		s.serveCDN(w, r, host)
	default:
		writeDetail(w, http.StatusNotFound, "Not Found")
	}
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, host string) {
	auth, ok := s.authenticate(w, r, host, false)
	if !ok {
		return
	}
	var body struct {
		AllowedApps     []string `json:"allowed_apps"`
		TokenExpiration *int64   `json:"token_expiration"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		writeValidation(w, "body", "request body must be JSON {\"allowed_apps\": [alias], \"token_expiration\": seconds}: "+err.Error())
		return
	}
	if len(body.AllowedApps) == 0 {
		writeValidation(w, "allowed_apps", "field required: a list with the app alias")
		return
	}
	ttl := DefaultTokenTTL
	if body.TokenExpiration != nil {
		if *body.TokenExpiration <= 0 {
			writeValidation(w, "token_expiration", "ensure this value is greater than 0")
			return
		}
		ttl = time.Duration(*body.TokenExpiration) * time.Second
	}
	if ttl > s.opts.TokenTTLMax {
		ttl = s.opts.TokenTTLMax
	}
	tok, err := s.mintJWT(auth.keyID, body.AllowedApps, ttl)
	if err != nil {
		writeDetail(w, http.StatusInternalServerError, "signing token failed")
		return
	}
	writeJSON(w, http.StatusOK, tok)
}

// MintToken signs a JWT as POST /tokens/ would for keyID (tests use it to
// craft tokens for apps or lifetimes the sidecar would not ask for; a negative
// ttl gives an expired token).
func (s *Server) MintToken(keyID string, allowedApps []string, ttl time.Duration) (string, error) {
	return s.mintJWT(keyID, allowedApps, ttl)
}

func (s *Server) mintJWT(keyID string, apps []string, ttl time.Duration) (string, error) {
	now := time.Now()
	claims := tokenClaims{
		AllowedApps: apps,
		KeyID:       keyID,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   keyID,
			Issuer:    "fakefal",
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
			ID:        randHex(8),
		},
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.jwtKey)
	if err != nil {
		return "", fmt.Errorf("signing JWT: %w", err)
	}
	return tok, nil
}

// writeValidation answers 422 in FastAPI's shape, which fal's clients turn
// into a ValidationError.
func writeValidation(w http.ResponseWriter, field, msg string) {
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
		"detail": []map[string]any{{"loc": []string{"body", field}, "msg": msg, "type": "value_error"}},
	})
}

func (s *Server) serveInitiate(w http.ResponseWriter, r *http.Request, host string) {
	var body struct {
		ContentType string `json:"content_type"`
		FileName    string `json:"file_name"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		writeValidation(w, "body", "request body must be JSON {\"content_type\", \"file_name\"}: "+err.Error())
		return
	}
	if body.FileName == "" {
		body.FileName = "upload.bin"
	}
	if body.ContentType == "" {
		body.ContentType = "application/octet-stream"
	}
	up := &upload{id: randHex(12), fileName: path.Base(body.FileName), contentType: body.ContentType, parts: map[int][]byte{}}
	s.mu.Lock()
	s.uploads[up.id] = up
	s.mu.Unlock()
	// The upload goes straight from the client to the CDN (not through a
	// proxy), so upload_url names this listener, not the Host header.
	base := s.URL(host)
	writeJSON(w, http.StatusOK, map[string]any{
		"upload_url": base + "/__cdn/upload/" + up.id + "?signature=" + randHex(8),
		"file_url":   s.fileURL(host, up),
	})
}

func (s *Server) fileURL(host string, up *upload) string {
	return s.URL(host) + "/__cdn/files/" + up.id + "/" + url.PathEscape(up.fileName)
}

func (s *Server) serveCompleteMultipart(w http.ResponseWriter, r *http.Request, host string) {
	var body struct {
		UploadURL string `json:"upload_url"`
		Parts     []struct {
			PartNumber int    `json:"partNumber"`
			ETag       string `json:"etag"`
		} `json:"parts"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		writeValidation(w, "body", "request body must be JSON {\"upload_url\", \"parts\"}: "+err.Error())
		return
	}
	u, err := url.Parse(body.UploadURL)
	if err != nil || !strings.HasPrefix(u.Path, "/__cdn/upload/") {
		writeValidation(w, "upload_url", "must be an upload_url returned by initiate-multipart")
		return
	}
	up, ok := s.finishUpload(strings.TrimPrefix(u.Path, "/__cdn/upload/"))
	if !ok {
		writeDetail(w, http.StatusNotFound, "upload not found")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"file_url": s.fileURL(host, up)})
}

// finishUpload joins the parts of a multipart upload.
func (s *Server) finishUpload(id string) (*upload, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	up, ok := s.uploads[id]
	if !ok {
		return nil, false
	}
	if len(up.parts) > 0 {
		nums := make([]int, 0, len(up.parts))
		for n := range up.parts {
			nums = append(nums, n)
		}
		sort.Ints(nums)
		up.data = up.data[:0]
		for _, n := range nums {
			up.data = append(up.data, up.parts[n]...)
		}
	}
	up.complete = true
	return up, true
}

// serveCDN is the fake CDN: PUT /__cdn/upload/<id> stores bytes,
// PUT /__cdn/upload/<id>/<part> stores a part, POST /__cdn/upload/<id>/complete
// joins them, GET /__cdn/files/<id>/<name> serves the file.
func (s *Server) serveCDN(w http.ResponseWriter, r *http.Request, host string) {
	rest := strings.TrimPrefix(r.URL.Path, "/__cdn/")
	kind, rest, _ := strings.Cut(rest, "/")
	id, sub, _ := strings.Cut(rest, "/")
	s.mu.Lock()
	up, ok := s.uploads[id]
	s.mu.Unlock()
	if !ok {
		writeDetail(w, http.StatusNotFound, "upload not found")
		return
	}
	switch {
	case kind == "files" && r.Method == http.MethodGet:
		s.mu.Lock()
		data, ct := append([]byte(nil), up.data...), up.contentType
		s.mu.Unlock()
		w.Header().Set("Content-Type", ct)
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		_, _ = w.Write(data)
	case kind == "upload" && r.Method == http.MethodPut:
		data, err := io.ReadAll(io.LimitReader(r.Body, maxUploadBytes+1))
		if err != nil || len(data) > maxUploadBytes {
			writeDetail(w, http.StatusRequestEntityTooLarge, "upload too large or unreadable")
			return
		}
		sum := sha256.Sum256(data)
		etag := `"` + hex.EncodeToString(sum[:8]) + `"`
		s.mu.Lock()
		if sub == "" {
			up.data = data
			if ct := r.Header.Get("Content-Type"); ct != "" {
				up.contentType = ct
			}
			up.complete = true
		} else if n, err := strconv.Atoi(sub); err == nil && n > 0 {
			up.parts[n] = data
		} else {
			s.mu.Unlock()
			writeDetail(w, http.StatusNotFound, "unknown upload part "+sub)
			return
		}
		s.mu.Unlock()
		w.Header().Set("ETag", etag)
		if sub == "" {
			writeJSON(w, http.StatusOK, map[string]any{"file_url": s.fileURL(host, up)})
			return
		}
		n, _ := strconv.Atoi(sub)
		writeJSON(w, http.StatusOK, map[string]any{"partNumber": n, "etag": etag})
	case kind == "upload" && r.Method == http.MethodPost && sub == "complete":
		up, _ = s.finishUpload(id)
		writeJSON(w, http.StatusOK, map[string]any{"file_url": s.fileURL(host, up)})
	default:
		writeDetail(w, http.StatusMethodNotAllowed, "Method Not Allowed")
	}
}

// UploadedFile returns what was uploaded for a file_url fakefal handed out.
func (s *Server) UploadedFile(fileURL string) (data []byte, contentType string, ok bool) {
	u, err := url.Parse(fileURL)
	if err != nil {
		return nil, "", false
	}
	rest, found := strings.CutPrefix(u.Path, "/__cdn/files/")
	if !found {
		return nil, "", false
	}
	id, _, _ := strings.Cut(rest, "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	up, ok := s.uploads[id]
	if !ok || !up.complete {
		return nil, "", false
	}
	return append([]byte(nil), up.data...), up.contentType, true
}
