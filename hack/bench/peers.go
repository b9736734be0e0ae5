package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/gorilla/websocket"

	"github.com/falguard/falguard/hack/fakefal"
)

// Peer names, in the order the report lists them.
const (
	peerDirect   = "direct"
	peerNginx    = "nginx"
	peerOfficial = "official proxy"
	peerSidecar  = "falguard-sidecar"
	peerSidecarB = "sidecar B (-sidecar-b)"
)

const (
	benchKey = "benchkid:benchsecret"
	benchApp = "fal-ai/echo" // any fal.run app: fakefal echoes them all
)

// env is what every workload shares: fakefal and the tools that run peers.
type env struct {
	cfg     config
	ff      *fakefal.Server
	caPool  *x509.CertPool
	workDir string
}

// endpoint is one peer, up and ready, as the client sees it.
type endpoint struct {
	name   string
	proc   *proc // the hop process; nil for direct
	client *http.Client
	// run builds a request to the fal.run app path (e.g. /fal-ai/echo).
	run func(path string, body []byte) *http.Request
	// token builds a request for a realtime token for benchApp.
	token func() *http.Request
	// ws is the realtime URL and handshake headers; empty when the peer
	// cannot relay WebSockets.
	wsURL    string
	wsHeader http.Header
	dialer   *websocket.Dialer
}

func (e *endpoint) pid() int {
	if e.proc == nil {
		return 0
	}
	return e.proc.pid()
}

func (e *endpoint) stop() {
	if e.proc != nil {
		e.proc.stop()
	}
	e.client.CloseIdleConnections()
}

func newClient(tlsConf *tls.Config) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     tlsConf,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func freePort() (int, error) {
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (e *env) hostPort(host string) string {
	u, _ := url.Parse(e.ff.URL(host))
	return u.Host
}

func tokenBody() []byte {
	return []byte(`{"allowed_apps":["echo"],"token_expiration":120}`)
}

// proxyRequest is a request in fal's server-proxy protocol.
func proxyRequest(base, target string, body []byte) *http.Request {
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, base+"/api/fal/proxy", bytes.NewReader(body))
	req.Header.Set("x-fal-target-url", target)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	return req
}

// start brings up the named peer and waits until it serves.
func (e *env) start(ctx context.Context, name string) (*endpoint, error) {
	switch name {
	case peerDirect:
		return e.startDirect(), nil
	case peerNginx:
		return e.startNginx(ctx)
	case peerOfficial:
		return e.startOfficial(ctx)
	case peerSidecar:
		ep, _, err := e.startSidecar(ctx, sidecarOpts{})
		return ep, err
	case peerSidecarB:
		ep, _, err := e.startSidecar(ctx, sidecarOpts{bin: e.cfg.sidecarB})
		if ep != nil {
			ep.name = peerSidecarB
		}
		return ep, err
	}
	return nil, fmt.Errorf("unknown peer %q", name)
}

// startDirect is the floor: the client talks TLS to fakefal with the key.
func (e *env) startDirect() *endpoint {
	tlsConf := &tls.Config{RootCAs: e.caPool, ServerName: fakefal.HostRun}
	run := e.ff.URL(fakefal.HostRun)
	rest := e.ff.URL(fakefal.HostRest)
	h := http.Header{}
	h.Set("Authorization", "Key "+benchKey)
	return &endpoint{
		name:   peerDirect,
		client: newClient(tlsConf),
		run: func(path string, body []byte) *http.Request {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, run+path, bytes.NewReader(body))
			req.Header.Set("Authorization", "Key "+benchKey)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json")
			return req
		},
		token: func() *http.Request {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, rest+"/tokens/", bytes.NewReader(tokenBody()))
			req.Header.Set("Authorization", "Key "+benchKey)
			req.Header.Set("Content-Type", "application/json")
			return req
		},
		wsURL:    strings.Replace(run, "https://", "wss://", 1) + "/" + benchApp + "/realtime",
		wsHeader: h,
		dialer:   &websocket.Dialer{TLSClientConfig: tlsConf, HandshakeTimeout: 10 * time.Second, ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10},
	}
}

func plainDialer() *websocket.Dialer {
	return &websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 64 << 10, WriteBufferSize: 64 << 10}
}

var nginxConf = template.Must(template.New("nginx").Parse(`
{{if .Root}}user root root;{{end}}
worker_processes 2;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path {{.Dir}}/body;
  proxy_temp_path {{.Dir}}/proxy;
  fastcgi_temp_path {{.Dir}}/fastcgi;
  uwsgi_temp_path {{.Dir}}/uwsgi;
  scgi_temp_path {{.Dir}}/scgi;
  client_max_body_size 32m;
  keepalive_requests 100000;

  upstream fal_run { server {{.Run}}; keepalive 256; }
  upstream rest_fal { server {{.Rest}}; keepalive 256; }

  # fal's server-proxy protocol: the target is in x-fal-target-url; pick the
  # upstream and path from it, as an nginx user fronting fal would.
  map $http_x_fal_target_url $fal_upstream {
    default "";
    "~^https://fal\.run/" fal_run;
    "~^https://rest\.fal\.ai/tokens/$" rest_fal;
  }
  map $http_x_fal_target_url $fal_host {
    default "";
    "~^https://(?<h>[^/:]+)/" $h;
  }
  map $http_x_fal_target_url $fal_path {
    default "/";
    "~^https://[^/]+(?<p>/.*)$" $p;
  }

  proxy_ssl_trusted_certificate {{.CA}};
  proxy_ssl_verify on;
  proxy_ssl_server_name on;
  proxy_ssl_session_reuse on;
  proxy_http_version 1.1;
  proxy_buffering off;
  proxy_read_timeout 3600s;
  proxy_send_timeout 3600s;

  server {
    listen 127.0.0.1:{{.Port}};
    location = /api/fal/proxy {
      if ($fal_upstream = "") { return 400; }
      proxy_pass https://$fal_upstream$fal_path;
      proxy_ssl_name $fal_host;
      proxy_set_header Host $fal_host;
      proxy_set_header Authorization "Key {{.Key}}";
      proxy_set_header x-fal-target-url "";
      proxy_set_header Connection "";
    }
    location ~ ^/realtime/(?<rt_app>[^/]+/[^/]+)$ {
      proxy_pass https://fal_run/$rt_app/realtime$is_args$args;
      proxy_ssl_name fal.run;
      proxy_set_header Host fal.run;
      proxy_set_header Authorization "Key {{.Key}}";
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
    }
  }
}
`))

func (e *env) startNginx(ctx context.Context) (*endpoint, error) {
	dir, err := os.MkdirTemp(e.workDir, "nginx-")
	if err != nil {
		return nil, fmt.Errorf("creating nginx dir: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("nginx dir: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	var conf bytes.Buffer
	if err := nginxConf.Execute(&conf, map[string]any{
		"Root": os.Geteuid() == 0, "Dir": dir, "Port": port, "CA": e.ff.CAFile(), "Key": benchKey,
		"Run": e.hostPort(fakefal.HostRun), "Rest": e.hostPort(fakefal.HostRest),
	}); err != nil {
		return nil, fmt.Errorf("rendering nginx config: %w", err)
	}
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, conf.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("writing nginx config: %w", err)
	}
	p, err := startProc("nginx", nil, dir, nil, e.cfg.nginxBin,
		"-p", dir, "-c", confFile, "-e", filepath.Join(dir, "error.log"), "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := waitFor(ctx, p, 10*time.Second, 5*time.Millisecond, "nginx to listen", func() bool { return canDial(port) }); err != nil {
		p.stop()
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return nil, fmt.Errorf("%w (error.log: %s)", err, strings.TrimSpace(string(b)))
	}
	return &endpoint{
		name:   peerNginx,
		proc:   p,
		client: newClient(nil),
		run: func(path string, body []byte) *http.Request {
			return proxyRequest(base, "https://fal.run"+path, body)
		},
		token: func() *http.Request {
			return proxyRequest(base, "https://rest.fal.ai/tokens/", tokenBody())
		},
		wsURL:  fmt.Sprintf("ws://127.0.0.1:%d/realtime/%s", port, benchApp),
		dialer: plainDialer(),
	}, nil
}

func canDial(port int) bool {
	d := net.Dialer{Timeout: 200 * time.Millisecond}
	c, err := d.DialContext(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func (e *env) startOfficial(ctx context.Context) (*endpoint, error) {
	portCh := make(chan string, 1)
	p, err := startProc("official proxy (node)", []string{
		"FAL_KEY=" + benchKey,
		"NODE_EXTRA_CA_CERTS=" + e.ff.CAFile(),
		"BENCH_LISTEN_PORT=0",
	}, e.cfg.officialDir, func(line string) {
		if v, ok := strings.CutPrefix(line, "listening "); ok {
			select {
			case portCh <- v:
			default:
			}
		}
	}, e.cfg.nodeBin, "server.js")
	if err != nil {
		return nil, err
	}
	var port string
	if err := waitFor(ctx, p, 20*time.Second, 5*time.Millisecond, "the official proxy to listen", func() bool {
		select {
		case port = <-portCh:
			return true
		default:
			return false
		}
	}); err != nil {
		p.stop()
		return nil, err
	}
	base := "http://127.0.0.1:" + port
	// The official proxy fetches the target URL as given, so it carries
	// fakefal's port; fal.run itself resolves to 127.0.0.1 in the launcher.
	runHost := "https://fal.run:" + portOf(e.ff.URL(fakefal.HostRun))
	restHost := "https://rest.fal.ai:" + portOf(e.ff.URL(fakefal.HostRest))
	return &endpoint{
		name:   peerOfficial,
		proc:   p,
		client: newClient(nil),
		run: func(path string, body []byte) *http.Request {
			return proxyRequest(base, runHost+path, body)
		},
		token: func() *http.Request {
			return proxyRequest(base, restHost+"/tokens/", tokenBody())
		},
	}, nil
}

func portOf(rawURL string) string {
	u, _ := url.Parse(rawURL)
	return u.Port()
}

// sidecarOpts choose how the sidecar gets its key: from a credentials dir
// (the Kubernetes layout) or, by default, from the environment.
type sidecarOpts struct {
	bin      string // default: -sidecar
	credsDir string
	// noCA leaves out --upstream-ca-file, as in production: the flag makes
	// the sidecar load the system roots eagerly (to add fakefal's CA to
	// them), which production does only at its first upstream TLS handshake.
	noCA bool
}

type sidecarInfo struct {
	opsBase string
}

func (e *env) sidecarArgs(port, opsPort int, o sidecarOpts) ([]string, []string) {
	args := []string{"run",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--ops-listen", fmt.Sprintf("127.0.0.1:%d", opsPort),
		// No pod to drain from: stop at once so restarts don't cost seconds.
		"--min-shutdown-delay", "0s",
	}
	if !o.noCA {
		args = append(args, "--upstream-ca-file", e.ff.CAFile())
	}
	for _, o := range e.ff.Overrides() {
		args = append(args, "--upstream-override", o)
	}
	var envv []string
	if o.credsDir != "" {
		args = append(args, "--credentials-dir", o.credsDir)
	} else {
		args = append(args, "--key-env", "FAL_KEY", "--allowed-app", "fal-ai/*")
		envv = append(envv, "FAL_KEY="+benchKey)
	}
	return args, envv
}

func (e *env) startSidecar(ctx context.Context, o sidecarOpts) (*endpoint, sidecarInfo, error) {
	port, err := freePort()
	if err != nil {
		return nil, sidecarInfo{}, err
	}
	opsPort, err := freePort()
	if err != nil {
		return nil, sidecarInfo{}, err
	}
	args, envv := e.sidecarArgs(port, opsPort, o)
	bin := e.cfg.sidecarBin
	if o.bin != "" {
		bin = o.bin
	}
	p, err := startProc("falguard-sidecar", envv, e.workDir, nil, bin, args...)
	if err != nil {
		return nil, sidecarInfo{}, err
	}
	ops := fmt.Sprintf("http://127.0.0.1:%d", opsPort)
	probe := &http.Client{Timeout: time.Second}
	if err := waitFor(ctx, p, 15*time.Second, 5*time.Millisecond, "the sidecar's /readyz", func() bool {
		return get200(probe, ops+"/readyz")
	}); err != nil {
		p.stop()
		return nil, sidecarInfo{}, err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	return &endpoint{
		name:   peerSidecar,
		proc:   p,
		client: newClient(nil),
		run: func(path string, body []byte) *http.Request {
			return proxyRequest(base, "https://fal.run"+path, body)
		},
		token: func() *http.Request {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, base+"/api/fal/token?app="+url.QueryEscape(benchApp), nil)
			return req
		},
		wsURL:  fmt.Sprintf("ws://127.0.0.1:%d/realtime/%s", port, benchApp),
		dialer: plainDialer(),
	}, sidecarInfo{opsBase: ops}, nil
}

func get200(c *http.Client, u string) bool {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, u, nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
