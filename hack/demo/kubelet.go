package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
)

// PodIP is the address every emulated pod gets: the demo has no pod network,
// so a pod's network namespace is the host's loopback.
const PodIP = "127.0.0.1"

// Image says how the emulated kubelet runs a container image on this machine.
type Image struct {
	// Entrypoint stands for the image's ENTRYPOINT: used when the container
	// sets no command. A container's command replaces it, with command[0]
	// looked up in Binaries by base name.
	Entrypoint []string
	Binaries   map[string]string
	// Stdio hands an app container's stdin/stdout to the harness (the demo
	// app is driven that way); stdout is also copied to the log.
	Stdio bool
}

// Kubelet plays kubelet for single pods: it binds them to a node, projects
// their Secret volumes in kubelet's atomic-writer layout (rewritten on every
// change of the Secret, through a watch), starts their containers from the
// stored spec as local processes, runs their probes and reports pod status.
//
// What it does not emulate: image pulls, users and securityContext (processes
// run as the harness's user), cgroups and resource limits, read-only mounts
// (files are written 0644 as kubelet does, but nothing stops a write), pod
// deletion from the API, and restarts of app containers.
type Kubelet struct {
	Client   kubernetes.Interface
	NodeName string
	RootDir  string
	Procs    *Procs
	Images   map[string]Image
	// Logf reports what kubelet does (volume writes, container starts).
	Logf func(format string, args ...any)
	// ProbePeriod caps probe periods so the demo does not wait 10s for a
	// probe that would pass now (kubelet's deadlines are kept).
	ProbePeriod time.Duration
}

// RunningPod is a pod the emulator started.
type RunningPod struct {
	k      *Kubelet
	Pod    *corev1.Pod
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// VolumeDirs maps volume name to its directory on this machine.
	VolumeDirs map[string]string

	mu         sync.Mutex
	containers map[string]*Container
	writes     []VolumeWrite
	stopping   bool
}

// VolumeWrite records one projection of a Secret into a volume.
type VolumeWrite struct {
	Time            time.Time
	Volume          string
	ResourceVersion string
	Changed         bool
	Err             error
}

// Container is one running container of an emulated pod.
type Container struct {
	Name     string
	Spec     corev1.Container
	Init     bool
	Sidecar  bool // init container with restartPolicy Always
	Argv     []string
	Env      []string
	Started  time.Time
	Ready    bool
	Restarts int

	mu     sync.Mutex
	proc   *Proc
	Stdin  io.WriteCloser
	Stdout io.ReadCloser
}

// RestartCount is how often the emulated kubelet restarted the container.
func (c *Container) RestartCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Restarts
}

// Proc is the container's current process.
func (c *Container) Proc() *Proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc
}

// EnsureNode registers the node the emulated pods are bound to.
func (k *Kubelet) EnsureNode(ctx context.Context) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   k.NodeName,
		Labels: map[string]string{"kubernetes.io/hostname": k.NodeName, "kubernetes.io/os": "linux"},
	}}
	created, err := k.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = k.Client.CoreV1().Nodes().Get(ctx, k.NodeName, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("registering node %s: %w", k.NodeName, err)
	}
	now := metav1.Now()
	created.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "falguard demo kubelet emulator", LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: PodIP}, {Type: corev1.NodeHostName, Address: k.NodeName}}
	created.Status.NodeInfo.KubeletVersion = "falguard-demo"
	if _, err := k.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("reporting node %s ready: %w", k.NodeName, err)
	}
	return nil
}

func (k *Kubelet) logf(format string, args ...any) {
	if k.Logf != nil {
		k.Logf(format, args...)
	}
}

// RunPod binds the stored pod to the node and starts it: volumes first, then
// init containers in order (a native sidecar must pass its startupProbe before
// the next one starts), then the app containers. It returns once every
// container has started and the sidecars are ready.
func (k *Kubelet) RunPod(ctx context.Context, namespace, name string) (*RunningPod, error) {
	pod, err := k.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading pod %s/%s: %w", namespace, name, err)
	}
	if pod.Spec.NodeName == "" {
		binding := &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
			Target:     corev1.ObjectReference{Kind: "Node", Name: k.NodeName},
		}
		if err := k.Client.CoreV1().Pods(namespace).Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("binding pod %s/%s to node %s: %w", namespace, name, k.NodeName, err)
		}
		if pod, err = k.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{}); err != nil {
			return nil, fmt.Errorf("reading pod %s/%s: %w", namespace, name, err)
		}
	}
	podCtx, cancel := context.WithCancel(context.Background())
	rp := &RunningPod{k: k, Pod: pod, ctx: podCtx, cancel: cancel, VolumeDirs: map[string]string{}, containers: map[string]*Container{}}
	if err := rp.start(ctx); err != nil {
		rp.Stop()
		return nil, err
	}
	return rp, nil
}

func (rp *RunningPod) start(ctx context.Context) error {
	k, pod := rp.k, rp.Pod
	podDir := filepath.Join(k.RootDir, "pods", string(pod.UID))
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.Secret != nil:
			dir := filepath.Join(podDir, "volumes", "kubernetes.io~secret", v.Name)
			rp.VolumeDirs[v.Name] = dir
			if err := rp.watchSecret(ctx, v.Name, v.Secret, dir); err != nil {
				return err
			}
		case v.EmptyDir != nil:
			dir := filepath.Join(podDir, "volumes", "kubernetes.io~empty-dir", v.Name)
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return fmt.Errorf("creating emptyDir %s: %w", v.Name, err)
			}
			rp.VolumeDirs[v.Name] = dir
		default:
			return fmt.Errorf("pod %s/%s: volume %q is of a kind the demo kubelet does not emulate (only secret and emptyDir)", pod.Namespace, pod.Name, v.Name)
		}
	}
	rp.reportStatus(ctx, "")

	for _, c := range pod.Spec.InitContainers {
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		ct, err := rp.startContainer(c, true, sidecar)
		if err != nil {
			return err
		}
		if !sidecar {
			if err := rp.waitCompleted(ctx, ct); err != nil {
				return err
			}
			continue
		}
		if err := rp.waitStarted(ctx, ct); err != nil {
			return err
		}
		rp.reportStatus(ctx, "")
	}
	for _, c := range pod.Spec.Containers {
		ct, err := rp.startContainer(c, false, false)
		if err != nil {
			return err
		}
		if err := rp.waitStarted(ctx, ct); err != nil {
			return err
		}
	}
	rp.reportStatus(ctx, "")
	return nil
}

// Container returns the named container.
func (rp *RunningPod) Container(name string) *Container {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.containers[name]
}

// VolumeWrites lists every projection of the pod's Secret volumes so far.
func (rp *RunningPod) VolumeWrites() []VolumeWrite {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return append([]VolumeWrite(nil), rp.writes...)
}

// watchSecret projects the Secret now and again on every change, as kubelet
// does for Secret volumes (kubelet polls its cache every sync period; the
// watch is the prompt version of that).
func (rp *RunningPod) watchSecret(ctx context.Context, volume string, src *corev1.SecretVolumeSource, dir string) error {
	k, ns := rp.k, rp.Pod.Namespace
	first := make(chan struct{})
	var firstOnce sync.Once
	project := func(obj any) {
		s, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		payload, err := secretPayload(s, src)
		w := VolumeWrite{Time: time.Now(), Volume: volume, ResourceVersion: s.ResourceVersion, Err: err}
		if err == nil {
			w.Changed, w.Err = AtomicWriter{Dir: dir}.Write(payload)
		}
		rp.mu.Lock()
		rp.writes = append(rp.writes, w)
		rp.mu.Unlock()
		switch {
		case w.Err != nil:
			k.logf("kubelet: volume %s (Secret %s): %v", volume, src.SecretName, w.Err)
		case w.Changed:
			k.logf("kubelet: volume %s: wrote Secret %s (resourceVersion %s: %s) with an atomic ..data swap", volume, src.SecretName, s.ResourceVersion, strings.Join(sortedNames(payload), ", "))
			firstOnce.Do(func() { close(first) })
		}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(k.Client, 0,
		informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", src.SecretName).String()
		}))
	inf := factory.Core().V1().Secrets().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    project,
		UpdateFunc: func(_, obj any) { project(obj) },
	}); err != nil {
		return fmt.Errorf("watching Secret %s/%s: %w", ns, src.SecretName, err)
	}
	factory.Start(rp.ctx.Done())

	// Like kubelet, the pod waits in ContainerCreating until the Secret exists
	// (the controller may not have written the managed Secret yet).
	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	select {
	case <-first:
		return nil
	case <-wait.Done():
		optional := src.Optional != nil && *src.Optional
		if optional {
			return nil
		}
		return fmt.Errorf("volume %s: Secret %s/%s did not appear (as kubelet, the pod stays in ContainerCreating): %w", volume, ns, src.SecretName, context.Cause(wait))
	}
}

// secretPayload maps a Secret to volume files, honouring items and modes.
func secretPayload(s *corev1.Secret, src *corev1.SecretVolumeSource) (map[string]FileProjection, error) {
	mode := os.FileMode(corev1.SecretVolumeSourceDefaultMode)
	if src.DefaultMode != nil {
		mode = os.FileMode(*src.DefaultMode)
	}
	out := map[string]FileProjection{}
	if len(src.Items) == 0 {
		for k, v := range s.Data {
			out[k] = FileProjection{Data: v, Mode: mode}
		}
		return out, nil
	}
	for _, it := range src.Items {
		v, ok := s.Data[it.Key]
		if !ok {
			if src.Optional != nil && *src.Optional {
				continue
			}
			return nil, fmt.Errorf("secret %s has no key %q named in the volume's items", s.Name, it.Key)
		}
		m := mode
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		out[it.Path] = FileProjection{Data: v, Mode: m}
	}
	return out, nil
}

func (rp *RunningPod) startContainer(spec corev1.Container, init, sidecar bool) (*Container, error) {
	k, pod := rp.k, rp.Pod
	img, ok := k.Images[spec.Image]
	if !ok {
		known := make([]string, 0, len(k.Images))
		for name := range k.Images {
			known = append(known, name)
		}
		sort.Strings(known)
		return nil, fmt.Errorf("container %s: image %q is not one the demo kubelet can run (it knows %s)", spec.Name, spec.Image, strings.Join(known, ", "))
	}
	env, err := rp.containerEnv(spec)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", spec.Name, err)
	}
	vars := map[string]string{}
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		vars[name] = value
	}
	argv, err := resolveArgv(img, spec, vars)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", spec.Name, err)
	}
	mounts, err := rp.mountMap(spec)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", spec.Name, err)
	}
	for i := range argv {
		argv[i] = localize(argv[i], mounts)
	}
	for i := range env {
		env[i] = localize(env[i], mounts)
	}
	ct := &Container{Name: spec.Name, Spec: spec, Init: init, Sidecar: sidecar, Argv: argv, Env: env}
	if err := rp.launch(ct, img); err != nil {
		return nil, err
	}
	rp.mu.Lock()
	rp.containers[spec.Name] = ct
	rp.mu.Unlock()
	k.logf("kubelet: started container %s of pod %s/%s: %s", spec.Name, pod.Namespace, pod.Name, strings.Join(argv, " "))
	if sidecar {
		rp.wg.Add(1)
		go rp.keepRunning(ct, img)
	}
	return ct, nil
}

func (rp *RunningPod) launch(ct *Container, img Image) error {
	// Its lifetime is Procs' (SIGTERM with the pod's grace period), not a context's.
	cmd := exec.CommandContext(context.Background(), ct.Argv[0], ct.Argv[1:]...)
	cmd.Env = ct.Env
	var stdin io.WriteCloser
	var stdout io.ReadCloser
	var tee io.WriteCloser
	if img.Stdio && !ct.Init { // init containers finish on their own; nobody reads them
		var err error
		if stdin, err = cmd.StdinPipe(); err != nil {
			return fmt.Errorf("container %s: stdin: %w", ct.Name, err)
		}
		// The harness reads stdout; the log keeps a copy for failure reports.
		stdout, tee = io.Pipe()
	}
	p, err := rp.k.Procs.StartTee(rp.Pod.Name+"/"+ct.Name, cmd, tee)
	if err != nil {
		return fmt.Errorf("container %s: %w", ct.Name, err)
	}
	ct.mu.Lock()
	ct.proc, ct.Stdin, ct.Stdout, ct.Started = p, stdin, stdout, time.Now()
	ct.mu.Unlock()
	return nil
}

// keepRunning restarts a native sidecar whenever it exits, with kubelet's
// doubling back-off (capped lower than kubelet's 5 minutes).
func (rp *RunningPod) keepRunning(ct *Container, img Image) {
	defer rp.wg.Done()
	backoff := time.Second
	for {
		p := ct.Proc()
		select {
		case <-rp.ctx.Done():
			return
		case <-p.Done():
		}
		if rp.isStopping() {
			return
		}
		_, err := p.Exited()
		rp.k.logf("kubelet: container %s exited (%s); restarting in %s", ct.Name, exitText(err), backoff)
		select {
		case <-rp.ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 10*time.Second {
			backoff *= 2
		}
		if err := rp.launch(ct, img); err != nil {
			rp.k.logf("kubelet: restarting %s: %v", ct.Name, err)
			continue
		}
		ct.mu.Lock()
		ct.Restarts++
		ct.Ready = false
		ct.mu.Unlock()
		ctx, cancel := context.WithTimeout(rp.ctx, 2*time.Minute)
		if err := rp.waitStarted(ctx, ct); err != nil {
			rp.k.logf("kubelet: %v", err)
		}
		cancel()
		rp.reportStatus(rp.ctx, "")
	}
}

func (rp *RunningPod) isStopping() bool {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.stopping
}

// waitStarted runs the container's startupProbe (or, without one, its
// readinessProbe) until it passes, within kubelet's deadline for it.
func (rp *RunningPod) waitStarted(ctx context.Context, ct *Container) error {
	probe := ct.Spec.StartupProbe
	if probe == nil {
		probe = ct.Spec.ReadinessProbe
	}
	if probe == nil {
		ct.mu.Lock()
		ct.Ready = true
		ct.mu.Unlock()
		return nil
	}
	period := time.Duration(max(probe.PeriodSeconds, 1)) * time.Second
	failures := max(probe.FailureThreshold, 1)
	deadline := time.Duration(probe.InitialDelaySeconds)*time.Second + period*time.Duration(failures)
	every := period
	if rp.k.ProbePeriod > 0 && every > rp.k.ProbePeriod {
		every = rp.k.ProbePeriod
	}
	timeout := time.Duration(max(probe.TimeoutSeconds, 1)) * time.Second
	pctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	select {
	case <-time.After(time.Duration(probe.InitialDelaySeconds) * time.Second):
	case <-pctx.Done():
	}
	check := func(ctx context.Context) error { return rp.runProbe(ctx, ct, probe, timeout) }
	if err := waitUntil(pctx, fmt.Sprintf("container %s startup probe", ct.Name), every, check, ct.Proc()); err != nil {
		return err
	}
	ct.mu.Lock()
	ct.Ready = true
	ct.mu.Unlock()
	rp.k.logf("kubelet: container %s passed its startup probe after %s", ct.Name, time.Since(ct.Started).Round(time.Millisecond))
	return nil
}

func (rp *RunningPod) waitCompleted(ctx context.Context, ct *Container) error {
	select {
	case <-ct.Proc().Done():
		if _, err := ct.Proc().Exited(); err != nil {
			return fmt.Errorf("init container %s failed: %s; its output:\n%s", ct.Name, exitText(err), indent(lastLines(ct.Proc().Tail(), 20)))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("init container %s did not finish: %w", ct.Name, context.Cause(ctx))
	}
}

func (rp *RunningPod) runProbe(ctx context.Context, ct *Container, p *corev1.Probe, timeout time.Duration) error {
	switch {
	case p.HTTPGet != nil:
		port, err := resolvePort(ct.Spec, p.HTTPGet.Port.String())
		if err != nil {
			return err
		}
		host := p.HTTPGet.Host
		if host == "" {
			host = PodIP
		}
		scheme := strings.ToLower(string(p.HTTPGet.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		u := fmt.Sprintf("%s://%s:%d%s", scheme, host, port, p.HTTPGet.Path)
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		for _, h := range p.HTTPGet.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		req.Header.Set("User-Agent", "kube-probe/1.37")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 10<<10))
		res.Body.Close()
		// kubelet counts 200-399 as success.
		if res.StatusCode < 200 || res.StatusCode >= 400 {
			return fmt.Errorf("GET %s: %s", u, res.Status)
		}
		return nil
	case p.TCPSocket != nil:
		return errors.New("tcpSocket probes are not emulated")
	case p.Exec != nil:
		return errors.New("exec probes are not emulated")
	}
	return errors.New("probe without a handler")
}

func resolvePort(c corev1.Container, port string) (int, error) {
	if n, err := strconv.Atoi(port); err == nil {
		return n, nil
	}
	for _, p := range c.Ports {
		if p.Name == port {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, port)
}

// mountMap maps each of the container's mount paths to its local directory.
func (rp *RunningPod) mountMap(c corev1.Container) (map[string]string, error) {
	out := map[string]string{}
	for _, m := range c.VolumeMounts {
		dir, ok := rp.VolumeDirs[m.Name]
		if !ok {
			return nil, fmt.Errorf("volume mount %s names no volume of the pod", m.Name)
		}
		if m.SubPath != "" {
			dir = filepath.Join(dir, m.SubPath)
		}
		out[m.MountPath] = dir
	}
	return out, nil
}

// localize rewrites, in one argument or NAME=value, every container path
// under a mount point to the volume's local directory, and a listen address
// on all interfaces (":4751") to the pod IP: the two places where a process on
// this machine differs from one in the pod's own mount and network namespaces.
func localize(s string, mounts map[string]string) string {
	paths := make([]string, 0, len(mounts))
	for p := range mounts {
		paths = append(paths, p)
	}
	// Longest first, so /a/b wins over /a.
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, mp := range paths {
		s = replacePathPrefix(s, mp, mounts[mp])
	}
	if m := anyAddr.FindStringSubmatchIndex(s); m != nil {
		s = s[:m[2]] + PodIP + s[m[2]:]
	}
	return s
}

// anyAddr matches --something-listen=:port (or NAME_LISTEN=:port).
var anyAddr = regexp.MustCompile(`(?i)listen[=]()(:\d+)$`)

func replacePathPrefix(s, from, to string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, from)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(from)
		startOK := i == 0 || strings.ContainsRune("=:, '\"", rune(s[i-1]))
		endOK := end == len(s) || strings.ContainsRune("/:, '\"", rune(s[end]))
		b.WriteString(s[:i])
		if startOK && endOK {
			b.WriteString(to)
		} else {
			b.WriteString(from)
		}
		s = s[end:]
	}
}

// resolveArgv builds the process argv as a container runtime would: command
// replaces the entrypoint, args follow, and $(VAR) references expand from the
// container's env ($$ escapes a dollar).
func resolveArgv(img Image, c corev1.Container, vars map[string]string) ([]string, error) {
	var argv []string
	if len(c.Command) > 0 {
		bin, ok := img.Binaries[filepath.Base(c.Command[0])]
		if !ok {
			return nil, fmt.Errorf("command %q is not a binary of image %s the demo kubelet knows", c.Command[0], c.Image)
		}
		argv = append([]string{bin}, c.Command[1:]...)
	} else {
		if len(img.Entrypoint) == 0 {
			return nil, fmt.Errorf("image %s has no entrypoint and the container sets no command", c.Image)
		}
		argv = append([]string(nil), img.Entrypoint...)
	}
	argv = append(argv, c.Args...)
	for i := range argv {
		argv[i] = expandVars(argv[i], vars)
	}
	return argv, nil
}

var varRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

func expandVars(s string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		if v, ok := vars[m[2:len(m)-1]]; ok {
			return v
		}
		return m // kubelet leaves unknown references as they are
	})
}

// containerEnv resolves the container's env like kubelet: envFrom first, then
// env in order (later wins), each value expanding $(VAR) from those before it.
// PATH and HOME come from this machine, standing in for the image's.
func (rp *RunningPod) containerEnv(c corev1.Container) ([]string, error) {
	pod := rp.Pod
	order := []string{}
	vals := map[string]string{}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	set("PATH", os.Getenv("PATH"))
	set("HOME", os.Getenv("HOME"))
	set("HOSTNAME", pod.Name)
	for _, ef := range c.EnvFrom {
		if ef.SecretRef != nil || ef.ConfigMapRef != nil {
			return nil, errors.New("envFrom is not emulated by the demo kubelet")
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expandVars(e.Value, vals))
			continue
		}
		v, err := rp.envFrom(c, e)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		set(e.Name, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vals[k])
	}
	return out, nil
}

func (rp *RunningPod) envFrom(c corev1.Container, e corev1.EnvVar) (string, error) {
	pod, vf := rp.Pod, e.ValueFrom
	switch {
	case vf.FieldRef != nil:
		switch p := vf.FieldRef.FieldPath; p {
		case "metadata.name":
			return pod.Name, nil
		case "metadata.namespace":
			return pod.Namespace, nil
		case "metadata.uid":
			return string(pod.UID), nil
		case "spec.nodeName":
			return pod.Spec.NodeName, nil
		case "spec.serviceAccountName":
			return pod.Spec.ServiceAccountName, nil
		case "status.podIP", "status.hostIP", "status.podIPs", "status.hostIPs":
			return PodIP, nil
		default:
			if m := regexp.MustCompile(`^metadata\.(labels|annotations)\['(.+)'\]$`).FindStringSubmatch(p); m != nil {
				if m[1] == "labels" {
					return pod.Labels[m[2]], nil
				}
				return pod.Annotations[m[2]], nil
			}
			return "", fmt.Errorf("fieldRef %s is not emulated", p)
		}
	case vf.ResourceFieldRef != nil:
		r := vf.ResourceFieldRef
		var q resource.Quantity
		var ok bool
		switch {
		case strings.HasPrefix(r.Resource, "limits."):
			q, ok = c.Resources.Limits[corev1.ResourceName(strings.TrimPrefix(r.Resource, "limits."))]
		case strings.HasPrefix(r.Resource, "requests."):
			q, ok = c.Resources.Requests[corev1.ResourceName(strings.TrimPrefix(r.Resource, "requests."))]
		}
		if !ok {
			return "0", nil // kubelet substitutes node allocatable; the demo has none
		}
		divisor := r.Divisor
		if divisor.IsZero() {
			divisor = resource.MustParse("1")
		}
		if strings.HasSuffix(r.Resource, "cpu") {
			return strconv.FormatInt((q.MilliValue()+divisor.MilliValue()-1)/divisor.MilliValue(), 10), nil
		}
		return strconv.FormatInt((q.Value()+divisor.Value()-1)/divisor.Value(), 10), nil
	case vf.SecretKeyRef != nil:
		s, err := rp.k.Client.CoreV1().Secrets(pod.Namespace).Get(rp.ctx, vf.SecretKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("reading Secret %s: %w", vf.SecretKeyRef.Name, err)
		}
		return string(s.Data[vf.SecretKeyRef.Key]), nil
	case vf.ConfigMapKeyRef != nil:
		cm, err := rp.k.Client.CoreV1().ConfigMaps(pod.Namespace).Get(rp.ctx, vf.ConfigMapKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("reading ConfigMap %s: %w", vf.ConfigMapKeyRef.Name, err)
		}
		return cm.Data[vf.ConfigMapKeyRef.Key], nil
	}
	return "", errors.New("valueFrom of an unknown kind")
}

// reportStatus writes the pod's status as kubelet would (phase, IPs,
// conditions, container statuses), so kubectl shows what runs.
func (rp *RunningPod) reportStatus(ctx context.Context, phase corev1.PodPhase) {
	k, pod := rp.k, rp.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := k.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		rp.fillStatus(&cur.Status, phase)
		_, err = k.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && ctx.Err() == nil {
		k.logf("kubelet: reporting status of pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

func (rp *RunningPod) fillStatus(st *corev1.PodStatus, phase corev1.PodPhase) {
	pod := rp.Pod
	now := metav1.Now()
	rp.mu.Lock()
	defer rp.mu.Unlock()
	status := func(c corev1.Container) corev1.ContainerStatus {
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "falguard-demo://" + c.Image}
		ct := rp.containers[c.Name]
		if ct == nil {
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "PodInitializing"}
			return cs
		}
		ct.mu.Lock()
		defer ct.mu.Unlock()
		cs.RestartCount = int32(ct.Restarts)
		cs.Ready = ct.Ready
		started := ct.Ready
		cs.Started = &started
		if done, err := ct.proc.Exited(); done {
			code := int32(0)
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = int32(ee.ExitCode())
			}
			cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: code, FinishedAt: now}
		} else {
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(ct.Started)}
		}
		cs.ContainerID = fmt.Sprintf("falguard-demo://%d", ct.proc.Pid())
		return cs
	}
	st.InitContainerStatuses = st.InitContainerStatuses[:0]
	initialized := true
	for _, c := range pod.Spec.InitContainers {
		cs := status(c)
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
		if !cs.Ready && cs.State.Terminated == nil {
			initialized = false
		}
	}
	st.ContainerStatuses = st.ContainerStatuses[:0]
	ready := initialized
	for _, c := range pod.Spec.Containers {
		cs := status(c)
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		ready = ready && cs.Ready
	}
	for _, cs := range st.InitContainerStatuses {
		if cs.State.Running != nil && !cs.Ready {
			ready = false
		}
	}
	if phase == "" {
		phase = corev1.PodPending
		if len(rp.containers) == len(pod.Spec.InitContainers)+len(pod.Spec.Containers) {
			phase = corev1.PodRunning
		}
	}
	st.Phase = phase
	st.HostIP, st.PodIP = PodIP, PodIP
	st.HostIPs, st.PodIPs = []corev1.HostIP{{IP: PodIP}}, []corev1.PodIP{{IP: PodIP}}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		for _, c := range st.Conditions {
			if c.Type == t && c.Status == s {
				return c
			}
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, true),
		cond(corev1.PodInitialized, initialized),
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
	}
}

// Stop terminates the pod as kubelet does: app containers first, then the
// native sidecars in reverse order, each with the pod's grace period.
func (rp *RunningPod) Stop() {
	rp.mu.Lock()
	rp.stopping = true
	rp.mu.Unlock()
	grace := 30 * time.Second
	if g := rp.Pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	for i := len(rp.Pod.Spec.Containers) - 1; i >= 0; i-- {
		if ct := rp.Container(rp.Pod.Spec.Containers[i].Name); ct != nil {
			_ = ct.Proc().Stop(grace)
		}
	}
	for i := len(rp.Pod.Spec.InitContainers) - 1; i >= 0; i-- {
		if ct := rp.Container(rp.Pod.Spec.InitContainers[i].Name); ct != nil {
			_ = ct.Proc().Stop(grace)
		}
	}
	rp.cancel()
	rp.wg.Wait()
}
