// Package demo brings the whole of falguard up on one machine, on loopback
// only: the envtest control plane (kube-apiserver + etcd), the CRDs and the
// webhook configuration from config/, the real manager binary, fakefal in
// place of fal, and an emulated kubelet that runs an injected pod's sidecar
// and app (fal's official JS client) as local processes. `make demo` and the
// end-to-end suite (hack/e2e) are both built on it.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/hack/fakefal"
)

// Names the harness gives things in the cluster and on the machine.
const (
	OperatorNamespace = "falguard-system"
	NodeName          = "falguard-demo-node"
	// SidecarImage is what the manager injects; the emulated kubelet runs
	// bin/falguard-sidecar for it.
	SidecarImage = "falguard-sidecar:demo"
	// AppImage is the demo app; the emulated kubelet runs hack/demo/js/app.mjs.
	AppImage = "falguard-demo-app:dev"
	// AppContainer is the app container's name in demo pods.
	AppContainer = "app"
	// SidecarContainer is the injected container's name (internal/inject).
	SidecarContainer = "falguard-sidecar"
	// Pod annotations of internal/inject that move the sidecar's ports, so
	// several demo pods (and parallel runs) do not clash on 4750/4751.
	annotationProxyPort = "falguard.dev/proxy-port"
	annotationOpsPort   = "falguard.dev/ops-port"
	annotationLogLevel  = "falguard.dev/sidecar-log-level"
)

// Options configures Start.
type Options struct {
	// Root is the repository root; empty means found from the working dir.
	Root string
	// Out receives the step-by-step report.
	Out io.Writer
	// KeepRunDir leaves the run directory (logs, kubeconfig, volumes) behind.
	KeepRunDir bool
}

// Env is a running falguard system.
type Env struct {
	Root, RunDir string
	Steps        *Steps
	Procs        *Procs

	// Binaries and the kubeconfig written for people and the manager.
	Assets     string // KUBEBUILDER_ASSETS
	Kubectl    string
	ManagerBin string
	SidecarBin string
	Kubeconfig string

	// The control plane and clients of it.
	TestEnv *envtest.Environment
	REST    *rest.Config
	Kube    kubernetes.Interface
	Client  client.Client

	// fakefal, and the ADMIN key it accepts for rotations.
	Fal      *fakefal.Server
	AdminKey string

	// The manager and its webhook.
	WebhookConfigName  string
	WebhookPort        int
	ManagerMetricsPort int
	ManagerProbePort   int
	ManagerRestarts    int
	managerArgs        []string
	managerMu          sync.Mutex
	manager            *Proc

	Kubelet *Kubelet
	podsMu  sync.Mutex
	pods    []*RunningPod

	// Timings for the summary.
	TimeToControlPlane time.Duration
	TimeToManagerReady time.Duration
	buildTimes         map[string]time.Duration
	envtestWasCold     bool

	keepRunDir        bool
	controlPlaneLogs  []*os.File
	controlPlaneTails map[string]*tailBuffer
	closeOnce         sync.Once
}

// Scheme knows the core types and FalCredential.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = falguardv1alpha1.AddToScheme(s)
	return s
}

// Start builds what is needed and brings the system up: control plane, CRDs,
// webhook configuration, fakefal, manager. On error everything started so
// far is stopped again.
func Start(ctx context.Context, opts Options) (env *Env, err error) {
	root := opts.Root
	if root == "" {
		if root, err = FindRoot(); err != nil {
			return nil, err
		}
	}
	out := opts.Out
	if out == nil {
		out = os.Stdout
	}
	runDir, err := os.MkdirTemp("", "falguard-demo-")
	if err != nil {
		return nil, fmt.Errorf("creating the run directory: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(runDir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("creating the log directory: %w", err)
	}
	e := &Env{
		Root: root, RunDir: runDir, Steps: NewSteps(out), Procs: NewProcs(filepath.Join(runDir, "logs")),
		keepRunDir: opts.KeepRunDir, controlPlaneTails: map[string]*tailBuffer{}, buildTimes: map[string]time.Duration{},
		WebhookConfigName: "falguard-mutating-webhook",
	}
	defer func() {
		if err != nil {
			e.Steps.Fail(err)
			fmt.Fprintln(os.Stderr, "\nThe last output of every process involved:")
			e.DumpLogs(os.Stderr)
			e.Close()
			env = nil
		}
	}()

	if err := e.prepareTools(ctx); err != nil {
		return e, err
	}
	if err := e.build(ctx); err != nil {
		return e, err
	}
	if err := e.startControlPlane(ctx); err != nil {
		return e, err
	}
	if err := e.startFakeFal(); err != nil {
		return e, err
	}
	if err := e.installWebhook(ctx); err != nil {
		return e, err
	}
	if err := e.startManager(ctx); err != nil {
		return e, err
	}
	return e, nil
}

// FindRoot walks up from the working directory to falguard's go.mod.
func FindRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the repository root: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/falguard/falguard\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no falguard go.mod above %s: run from inside the falguard repository", dir)
		}
	}
}

// prepareTools gets the control plane binaries from hack/envtest.sh, showing
// its progress lines: the first run on a machine builds them (minutes).
func (e *Env) prepareTools(ctx context.Context) error {
	e.Steps.Begin("Preparing the Kubernetes control plane binaries (kube-apiserver, etcd, kubectl)")
	cmd := exec.CommandContext(ctx, filepath.Join(e.Root, "hack", "envtest.sh"))
	cmd.Dir = e.Root
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("running hack/envtest.sh: %w", err)
	}
	// A first build prints nothing for minutes at a time: say it is alive.
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(20 * time.Second)
		defer t.Stop()
		began := time.Now()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				e.Steps.Detail("still preparing the control plane (%s so far; only the first run on this machine builds it)", fmtDur(time.Since(began)))
			}
		}
	}()
	var tail []string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ">>") {
			e.envtestWasCold = true
			e.Steps.Detail("%s", strings.TrimSpace(strings.TrimPrefix(line, ">>")))
		}
		tail = append(tail, line)
		if len(tail) > 30 {
			tail = tail[1:]
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("hack/envtest.sh failed (%w); its output:\n%s", err, indent(strings.Join(tail, "\n")))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	e.Assets = lines[len(lines)-1]
	e.Kubectl = filepath.Join(e.Assets, "kubectl")
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(e.Assets, b)); err != nil {
			return fmt.Errorf("hack/envtest.sh printed %s, which has no %s: %w", e.Assets, b, err)
		}
	}
	how := "cached"
	if e.envtestWasCold {
		how = "built once, cached for every later run"
	}
	e.Steps.End("%s (%s)", relTo(e.Root, e.Assets), how)
	return nil
}

// build compiles the manager and the sidecar into bin/ and installs the
// demo app's npm packages, all at once. A lock keeps parallel runs (the demo
// and the e2e suite) from writing the same files together.
func (e *Env) build(ctx context.Context) error {
	e.Steps.Begin("Building the manager and the sidecar, installing @fal-ai/client for the demo app")
	bin := filepath.Join(e.Root, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	unlock, err := lockFile(filepath.Join(bin, ".demo-build.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	e.ManagerBin = filepath.Join(bin, "manager")
	e.SidecarBin = filepath.Join(bin, "falguard-sidecar")
	jobs := []struct {
		name string
		run  func() error
	}{
		{"manager", func() error { return e.run(ctx, e.Root, "go", "build", "-o", e.ManagerBin, ".") }},
		{"sidecar", func() error {
			return e.run(ctx, e.Root, "go", "build", "-o", e.SidecarBin, "./sidecar/cmd/falguard-sidecar")
		}},
		{"npm", func() error { return e.npmInstall(ctx) }},
	}
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.Now()
			errs[i] = j.run()
			mu.Lock()
			e.buildTimes[j.name] = time.Since(t)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	e.Steps.End("manager %s, sidecar %s, npm %s", fmtDur(e.buildTimes["manager"]), fmtDur(e.buildTimes["sidecar"]), fmtDur(e.buildTimes["npm"]))
	return nil
}

func (e *Env) run(ctx context.Context, dir string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s (in %s): %w\n%s", name, strings.Join(args, " "), relTo(e.Root, dir), err, indent(strings.TrimSpace(string(out))))
	}
	return nil
}

// npmInstall runs `npm ci` for hack/demo/js unless node_modules already
// matches package-lock.json (npm's hidden lockfile is newer than it).
func (e *Env) npmInstall(ctx context.Context) error {
	dir := filepath.Join(e.Root, "hack", "demo", "js")
	lock, err := os.Stat(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return fmt.Errorf("hack/demo/js/package-lock.json: %w", err)
	}
	if hidden, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json")); err == nil && !hidden.ModTime().Before(lock.ModTime()) {
		return nil
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return errors.New("npm is not on PATH: the demo app is fal's official JS client and needs Node.js 20 or newer with npm")
	}
	return e.run(ctx, dir, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
}

func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}

func (e *Env) startControlPlane(ctx context.Context) error {
	e.Steps.Begin("Starting the control plane (kube-apiserver + etcd on 127.0.0.1) and installing the FalCredential CRD")
	t := time.Now()
	te := &envtest.Environment{
		BinaryAssetsDirectory: e.Assets,
		CRDDirectoryPaths:     []string{filepath.Join(e.Root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme(),
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		f, err := os.Create(filepath.Join(e.RunDir, "logs", name+".log"))
		if err != nil {
			return err
		}
		tb := &tailBuffer{max: tailBytes}
		e.controlPlaneLogs = append(e.controlPlaneLogs, f)
		e.controlPlaneTails[name] = tb
		w := io.MultiWriter(f, tb)
		if name == "etcd" {
			te.ControlPlane.Etcd = &envtest.Etcd{Out: w, Err: w}
		} else {
			te.ControlPlane.APIServer = &envtest.APIServer{Out: w, Err: w}
		}
	}
	// envtest reads KUBEBUILDER_ASSETS before BinaryAssetsDirectory; ours wins.
	if err := os.Setenv("KUBEBUILDER_ASSETS", e.Assets); err != nil {
		return fmt.Errorf("setting KUBEBUILDER_ASSETS: %w", err)
	}
	cfg, err := te.Start()
	if err != nil {
		return fmt.Errorf("starting kube-apiserver and etcd from %s: %w", e.Assets, err)
	}
	e.TestEnv, e.REST = te, cfg
	if e.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("creating a Kubernetes client: %w", err)
	}
	if e.Client, err = client.New(cfg, client.Options{Scheme: Scheme()}); err != nil {
		return fmt.Errorf("creating a controller-runtime client: %w", err)
	}
	e.Kubeconfig = filepath.Join(e.RunDir, "kubeconfig")
	if err := os.WriteFile(e.Kubeconfig, te.KubeConfig, 0o600); err != nil {
		return fmt.Errorf("writing the kubeconfig: %w", err)
	}
	for _, ns := range []string{OperatorNamespace} {
		if err := e.ensureNamespace(ctx, ns); err != nil {
			return err
		}
	}
	e.Kubelet = &Kubelet{
		Client: e.Kube, NodeName: NodeName, RootDir: filepath.Join(e.RunDir, "kubelet"), Procs: e.Procs,
		ProbePeriod: 250 * time.Millisecond,
		Images: map[string]Image{
			SidecarImage: {Entrypoint: []string{e.SidecarBin}, Binaries: map[string]string{"falguard-sidecar": e.SidecarBin}},
			AppImage: {Entrypoint: []string{nodeBin(), filepath.Join(e.Root, "hack", "demo", "js", "app.mjs")},
				Binaries: map[string]string{"node": nodeBin()}, Stdio: true},
		},
		Logf: func(format string, args ...any) { e.Steps.Detail(format, args...) },
	}
	if err := e.Kubelet.EnsureNode(ctx); err != nil {
		return err
	}
	e.TimeToControlPlane = time.Since(t)
	e.Steps.End("API server at %s, kubeconfig %s", cfg.Host, e.Kubeconfig)
	return nil
}

func nodeBin() string {
	if p, err := exec.LookPath("node"); err == nil {
		return p
	}
	return "node"
}

func (e *Env) ensureNamespace(ctx context.Context, name string) error {
	_, err := e.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

func (e *Env) startFakeFal() error {
	e.Steps.Begin("Starting fakefal, the local stand-in for fal.ai (TLS with its own CA)")
	e.AdminKey = NewKey("demo-admin")
	fal, err := fakefal.Start(fakefal.Options{AdminKeys: []string{e.AdminKey}})
	if err != nil {
		return fmt.Errorf("starting fakefal: %w", err)
	}
	e.Fal = fal
	for _, o := range fal.Overrides() {
		e.Steps.Detail("%s", o)
	}
	e.Steps.End("one ADMIN-scope key for the operator's rotations")
	return nil
}

// NewKey makes a fresh "key_id:key_secret" with a readable id prefix.
func NewKey(prefix string) string {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%s:%s", prefix, hex.EncodeToString(b[:4]), hex.EncodeToString(b[4:]))
}

// KeyID is the public half of a key.
func KeyID(key string) string { id, _, _ := strings.Cut(key, ":"); return id }

// installWebhook applies config/webhook's MutatingWebhookConfiguration with
// its Service clientConfig turned into a URL on 127.0.0.1 (there are no
// Services without a cluster network). The manager fills in the caBundle.
func (e *Env) installWebhook(ctx context.Context) error {
	e.Steps.Begin("Installing the pod-injection webhook configuration from config/webhook")
	port, err := FreePort()
	if err != nil {
		return err
	}
	e.WebhookPort = port
	mwc, err := ReadWebhookConfig(filepath.Join(e.Root, "config", "webhook"))
	if err != nil {
		return err
	}
	if err := RewriteWebhookToURL(mwc, "127.0.0.1", port); err != nil {
		return err
	}
	e.WebhookConfigName = mwc.Name
	if _, err := e.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating MutatingWebhookConfiguration %s: %w", mwc.Name, err)
	}
	for _, w := range mwc.Webhooks {
		e.Steps.Detail("%s -> %s (failurePolicy %s)", w.Name, *w.ClientConfig.URL, failurePolicy(w))
	}
	e.Steps.End("%s, caBundle left for the manager to fill", mwc.Name)
	return nil
}

func failurePolicy(w admissionregistrationv1.MutatingWebhook) string {
	if w.FailurePolicy == nil {
		return "Fail"
	}
	return string(*w.FailurePolicy)
}

// ReadWebhookConfig finds the MutatingWebhookConfiguration in dir's YAML files.
func ReadWebhookConfig(dir string) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			doc, err := dec.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", f, err)
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil || tm.Kind != "MutatingWebhookConfiguration" {
				continue
			}
			var mwc admissionregistrationv1.MutatingWebhookConfiguration
			if err := yaml.UnmarshalStrict(doc, &mwc); err != nil {
				return nil, fmt.Errorf("decoding the MutatingWebhookConfiguration in %s: %w", f, err)
			}
			return &mwc, nil
		}
	}
	return nil, fmt.Errorf("no MutatingWebhookConfiguration in %s/*.yaml", dir)
}

// RewriteWebhookToURL points every webhook at https://host:port<service path>.
func RewriteWebhookToURL(mwc *admissionregistrationv1.MutatingWebhookConfiguration, host string, port int) error {
	for i := range mwc.Webhooks {
		cc := &mwc.Webhooks[i].ClientConfig
		path := ""
		switch {
		case cc.Service != nil:
			if cc.Service.Path != nil {
				path = *cc.Service.Path
			}
		case cc.URL != nil:
			return fmt.Errorf("webhook %s already uses a URL; config/webhook is expected to use a Service", mwc.Webhooks[i].Name)
		}
		u := fmt.Sprintf("https://%s%s", net.JoinHostPort(host, strconv.Itoa(port)), path)
		cc.Service, cc.URL, cc.CABundle = nil, &u, nil
	}
	return nil
}

// FreePort asks the kernel for a free port on 127.0.0.1.
func FreePort() (int, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (e *Env) startManager(ctx context.Context) error {
	e.Steps.Begin("Starting the manager (FalCredential controller + pod webhook) as a real process")
	t := time.Now()
	var err error
	if e.ManagerMetricsPort, err = FreePort(); err != nil {
		return err
	}
	if e.ManagerProbePort, err = FreePort(); err != nil {
		return err
	}
	certDir := filepath.Join(e.RunDir, "webhook-certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	args := []string{
		"--kubeconfig=" + e.Kubeconfig,
		"--leader-elect=true",
		"--leader-election-namespace=" + OperatorNamespace,
		"--metrics-bind-address=127.0.0.1:" + strconv.Itoa(e.ManagerMetricsPort),
		"--health-probe-bind-address=127.0.0.1:" + strconv.Itoa(e.ManagerProbePort),
		"--webhook-port=" + strconv.Itoa(e.WebhookPort),
		"--webhook-bind-host=127.0.0.1",
		"--webhook-cert-dir=" + certDir,
		"--webhook-config-name=" + e.WebhookConfigName,
		"--webhook-cert-hosts=127.0.0.1",
		"--namespace=" + OperatorNamespace,
		"--self-managed-certs=true",
		"--sidecar-image=" + SidecarImage,
		"--sidecar-env=FALGUARD_UPSTREAM_OVERRIDE=" + strings.Join(e.Fal.Overrides(), ","),
		"--sidecar-env=FALGUARD_UPSTREAM_CA_FILE=" + e.Fal.CAFile(),
		"--fal-ca-file=" + e.Fal.CAFile(),
	}
	for _, o := range e.Fal.Overrides() {
		args = append(args, "--fal-upstream-override="+o)
	}
	e.managerArgs = args
	if err := e.launchManager(ctx); err != nil {
		return err
	}
	e.TimeToManagerReady = time.Since(t)
	e.Steps.End("webhook serving on https://127.0.0.1:%d with a certificate the manager made; caBundle patched", e.WebhookPort)
	return nil
}

func (e *Env) launchManager(ctx context.Context) error {
	// Its lifetime is Procs' (SIGTERM on Stop), not a context's.
	cmd := exec.CommandContext(context.Background(), e.ManagerBin, e.managerArgs...)
	cmd.Env = append(os.Environ(), "POD_NAMESPACE="+OperatorNamespace)
	name := "manager"
	if e.ManagerRestarts > 0 {
		name = fmt.Sprintf("manager-%d", e.ManagerRestarts+1)
	}
	p, err := e.Procs.Start(name, cmd)
	if err != nil {
		return err
	}
	e.managerMu.Lock()
	e.manager = p
	e.managerMu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", e.ManagerProbePort)
	if err := waitUntil(wctx, "manager /readyz", 200*time.Millisecond, func(ctx context.Context) error { return httpOK(ctx, readyz) }, p); err != nil {
		return err
	}
	return waitUntil(wctx, "webhook caBundle and serving certificate", 200*time.Millisecond, e.checkWebhookTLS, p)
}

// checkWebhookTLS passes once every webhook has a caBundle and the webhook
// server presents a certificate for 127.0.0.1 that this caBundle verifies:
// exactly what kube-apiserver needs to call it.
func (e *Env) checkWebhookTLS(ctx context.Context) error {
	mwc, err := e.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, e.WebhookConfigName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, w := range mwc.Webhooks {
		if len(w.ClientConfig.CABundle) == 0 {
			return fmt.Errorf("webhook %s has no caBundle yet", w.Name)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(w.ClientConfig.CABundle) {
			return fmt.Errorf("webhook %s: caBundle holds no PEM certificate", w.Name)
		}
		d := tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := d.DialContext(dctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(e.WebhookPort)))
		cancel()
		if err != nil {
			return fmt.Errorf("TLS to the webhook with its caBundle: %w", err)
		}
		_ = conn.Close()
	}
	return nil
}

// HTTPOK passes when GET url answers 200.
func HTTPOK(ctx context.Context, url string) error { return httpOK(ctx, url) }

func httpOK(ctx context.Context, url string) error {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, res.Status)
	}
	return nil
}

// Manager is the running manager process.
func (e *Env) Manager() *Proc {
	e.managerMu.Lock()
	defer e.managerMu.Unlock()
	return e.manager
}

// RestartManager stops the manager with SIGTERM, as a rolling update would,
// and starts a new one with the same flags, waiting until it is ready again.
func (e *Env) RestartManager(ctx context.Context) error {
	old := e.Manager()
	if err := old.Stop(30 * time.Second); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return fmt.Errorf("stopping the manager: %w", err)
		}
		e.Steps.Detail("the old manager exited with %v", err)
	}
	e.ManagerRestarts++
	t := time.Now()
	if err := e.launchManager(ctx); err != nil {
		return err
	}
	e.Steps.Detail("manager restarted: the new process is ready and serving the webhook after %s", fmtDur(time.Since(t)))
	return nil
}

// ManagerMetrics fetches the manager's Prometheus metrics.
func (e *Env) ManagerMetrics(ctx context.Context) (string, error) {
	return getText(ctx, fmt.Sprintf("http://127.0.0.1:%d/metrics", e.ManagerMetricsPort))
}

func getText(ctx context.Context, url string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 8<<20))
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, res.Status)
	}
	return string(b), nil
}

// DumpLogs writes the tail of every process's log, the control plane's
// included, to w.
func (e *Env) DumpLogs(w io.Writer) {
	if !e.keepRunDir {
		_, _ = fmt.Fprintln(w, "(the full logs below are removed on exit; keep them with E2E_KEEP=1 for the e2e suite, --keep for the demo)")
	}
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if tb := e.controlPlaneTails[name]; tb != nil {
			_, _ = fmt.Fprintf(w, "\n===== %s (full log %s) =====\n%s\n", name, filepath.Join(e.RunDir, "logs", name+".log"), lastLines(tb.String(), 60))
		}
	}
	e.Procs.DumpLogs(w)
}

// Close stops every pod, the manager, fakefal and the control plane, and
// removes the run directory unless asked to keep it.
func (e *Env) Close() {
	e.closeOnce.Do(func() {
		e.podsMu.Lock()
		pods := append([]*RunningPod(nil), e.pods...)
		e.podsMu.Unlock()
		for i := len(pods) - 1; i >= 0; i-- {
			pods[i].Stop()
		}
		e.Procs.Close()
		if e.Fal != nil {
			e.Fal.Close()
		}
		if e.TestEnv != nil {
			if err := e.TestEnv.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "stopping the control plane: %v\n", err)
			}
		}
		for _, f := range e.controlPlaneLogs {
			_ = f.Close()
		}
		if !e.keepRunDir {
			_ = os.RemoveAll(e.RunDir)
		}
	})
}

// LogFiles lists the full log of every process the harness started (the
// control plane's excluded: it is not falguard's).
func (e *Env) LogFiles() []string {
	var out []string
	for _, p := range e.Procs.All() {
		out = append(out, p.LogPath)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// Leftovers lists what is still alive after Close: processes that did not
// exit and loopback ports of the system that still accept connections. Empty
// means the machine is as clean as before Start.
func (e *Env) Leftovers() []string {
	var out []string
	for _, p := range e.Procs.All() {
		if done, _ := p.Exited(); !done {
			out = append(out, fmt.Sprintf("process %s (pid %d) still running", p.Name, p.Pid()))
		}
	}
	addrs := []string{}
	if e.REST != nil {
		if u, err := url.Parse(e.REST.Host); err == nil {
			addrs = append(addrs, u.Host)
		}
	}
	for _, port := range []int{e.WebhookPort, e.ManagerProbePort, e.ManagerMetricsPort} {
		if port != 0 {
			addrs = append(addrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		}
	}
	e.podsMu.Lock()
	for _, rp := range e.pods {
		if port := rp.Pod.Annotations[annotationProxyPort]; port != "" {
			addrs = append(addrs, net.JoinHostPort(PodIP, port))
		}
		for _, c := range rp.Pod.Spec.InitContainers {
			for _, p := range c.Ports {
				addrs = append(addrs, net.JoinHostPort(PodIP, strconv.Itoa(int(p.ContainerPort))))
			}
		}
	}
	e.podsMu.Unlock()
	for _, a := range addrs {
		d := net.Dialer{Timeout: 500 * time.Millisecond}
		if c, err := d.DialContext(context.Background(), "tcp", a); err == nil {
			_ = c.Close()
			out = append(out, "something still listens on "+a)
		}
	}
	if !e.keepRunDir {
		if _, err := os.Stat(e.RunDir); err == nil {
			out = append(out, "run directory "+e.RunDir+" still exists")
		}
	}
	return out
}

func relTo(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}
