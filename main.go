// Command manager runs the falguard operator: the FalCredential controller,
// the pod-injection webhook and its self-managed certificates.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	falguardv1alpha1 "github.com/falguard/falguard/api/v1alpha1"
	"github.com/falguard/falguard/controllers"
	"github.com/falguard/falguard/controllers/podwebhook"
	"github.com/falguard/falguard/internal/falapi"
	"github.com/falguard/falguard/internal/inject"
)

var (
	scheme   = runtime.NewScheme()
	setupLog = ctrl.Log.WithName("setup")
	// version is stamped at build time with -ldflags "-X main.version=...".
	version = "dev"
)

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(falguardv1alpha1.AddToScheme(scheme))
}

// overrides collects repeatable canonical=replacement URL flags.
type overrides map[string]string

func (o overrides) String() string { return fmt.Sprint(map[string]string(o)) }
func (o overrides) Set(v string) error {
	from, to, ok := strings.Cut(v, "=")
	if !ok || from == "" || to == "" {
		return fmt.Errorf("want https://canonical.host=https://replacement, got %q", v)
	}
	o[strings.TrimRight(from, "/")] = strings.TrimRight(to, "/")
	return nil
}

// sidecarDefaults adds the resource and port flags to cfg and validates the
// result as the webhook would an annotated pod, so a bad default stops the
// manager at start instead of denying every pod.
func sidecarDefaults(cfg inject.Config, res podwebhook.ResourceFlags, proxyPort, opsPort int) (inject.Config, error) {
	r, err := res.Resources()
	if err != nil {
		return cfg, fmt.Errorf("sidecar resources: %w", err)
	}
	cfg.Resources = r
	if cfg.ProxyPort, err = podwebhook.ParsePort("sidecar-proxy-port", proxyPort); err != nil {
		return cfg, fmt.Errorf("sidecar ports: %w", err)
	}
	if cfg.OpsPort, err = podwebhook.ParsePort("sidecar-ops-port", opsPort); err != nil {
		return cfg, fmt.Errorf("sidecar ports: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("sidecar defaults: %w", err)
	}
	return cfg, nil
}

func main() {
	var (
		metricsAddr, probeAddr        string
		leaderElect                   bool
		leaderElectionNamespace       string
		webhookPort                   int
		webhookHost                   string
		webhookCertDir, webhookConfig string
		webhookServiceName, webhookNS string
		selfManagedCerts              bool
		sidecarImage                  string
		falCAFile                     string
		falOverrides                  = overrides{}
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address the metrics endpoint binds to; 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address the health probes bind to")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader so only one replica reconciles and writes certificates")
	flag.StringVar(&leaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader-election lease (default: the pod's namespace)")
	flag.IntVar(&webhookPort, "webhook-port", 9443, "port the pod webhook serves on")
	flag.StringVar(&webhookHost, "webhook-bind-host", "", "address the pod webhook binds to (default: all interfaces; 127.0.0.1 for a local control plane)")
	flag.StringVar(&webhookCertDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "directory holding tls.crt and tls.key for the webhook")
	flag.StringVar(&webhookConfig, "webhook-config-name", "falguard-mutating-webhook", "MutatingWebhookConfiguration whose caBundle the manager keeps current")
	flag.StringVar(&webhookServiceName, "webhook-service-name", "falguard-webhook-service", "Service in front of the webhook (names in the serving certificate)")
	flag.StringVar(&webhookNS, "namespace", os.Getenv("POD_NAMESPACE"), "namespace the manager runs in (certificate Secret, excluded from injection)")
	flag.BoolVar(&selfManagedCerts, "self-managed-certs", true, "generate and rotate webhook certificates; false when cert-manager provides them")
	flag.StringVar(&sidecarImage, "sidecar-image", "ghcr.io/falguard/falguard-sidecar:"+version, "image of the injected sidecar")
	var webhookCertHosts, sidecarPullPolicy string
	var sidecarEnv podwebhook.EnvFlag
	flag.StringVar(&webhookCertHosts, "webhook-cert-hosts", "", "extra names or IPs in the self-managed serving certificate, comma-separated (e.g. 127.0.0.1,localhost for a URL clientConfig)")
	flag.Var(&sidecarEnv, "sidecar-env", "NAME=VALUE added to the env of every injected sidecar (repeatable), e.g. HTTPS_PROXY=http://proxy:3128")
	flag.StringVar(&sidecarPullPolicy, "sidecar-image-pull-policy", "", "imagePullPolicy of the injected sidecar: Always, IfNotPresent or Never (default: the cluster's)")
	// Cluster-wide defaults of the sidecar's resources and ports; the pod
	// annotations (falguard.dev/sidecar-cpu-request, proxy-port, ...) still win.
	var sidecarRes podwebhook.ResourceFlags
	var sidecarProxyPort, sidecarOpsPort int
	flag.StringVar(&sidecarRes.CPURequest, "sidecar-cpu-request", inject.DefaultCPURequest, `default CPU request of the injected sidecar; "0" or empty for none`)
	flag.StringVar(&sidecarRes.CPULimit, "sidecar-cpu-limit", "", `default CPU limit of the injected sidecar; "0" or empty for none`)
	flag.StringVar(&sidecarRes.MemoryRequest, "sidecar-memory-request", inject.DefaultMemoryRequest, `default memory request of the injected sidecar; "0" or empty for none`)
	flag.StringVar(&sidecarRes.MemoryLimit, "sidecar-memory-limit", inject.DefaultMemoryLimit, `default memory limit of the injected sidecar; "0" or empty for none`)
	flag.IntVar(&sidecarProxyPort, "sidecar-proxy-port", inject.DefaultProxyPort, "default port of the sidecar's app API on 127.0.0.1 (1024-65535)")
	flag.IntVar(&sidecarOpsPort, "sidecar-ops-port", inject.DefaultOpsPort, "default port of the sidecar's probes and metrics listener (1024-65535)")
	flag.Var(falOverrides, "fal-upstream-override", "canonical=replacement base URL for a fal host (repeatable), e.g. https://api.fal.ai=https://127.0.0.1:9443")
	flag.StringVar(&falCAFile, "fal-ca-file", "", "extra CA bundle trusted for fal's TLS (tests, egress proxies)")
	opts := zap.Options{Development: false}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	// Sidecar flags are checked before connecting to the cluster, so a typo
	// fails fast with a message naming the flag.
	pullPolicy, err := podwebhook.ParsePullPolicy(sidecarPullPolicy)
	if err != nil {
		setupLog.Error(err, "invalid flag")
		os.Exit(1)
	}
	injectCfg, err := sidecarDefaults(inject.Config{Image: sidecarImage, PullPolicy: pullPolicy, Env: sidecarEnv},
		sidecarRes, sidecarProxyPort, sidecarOpsPort)
	if err != nil {
		setupLog.Error(err, "invalid flag")
		os.Exit(1)
	}

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "falguard-manager.falguard.dev",
		LeaderElectionNamespace: leaderElectionNamespace,
		// The process exits right after the manager stops, so handing the lease
		// back at once is safe and lets a rolling update's new leader start now.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		setupLog.Error(err, "unable to create manager")
		os.Exit(1)
	}

	// --- FalCredential controller (controllers/falcredential_controller.go) ---
	falClient, err := falapi.New(falapi.Options{
		Overrides: falOverrides,
		CAFile:    falCAFile,
		OnCall:    controllers.ObserveFalCall,
	})
	if err != nil {
		setupLog.Error(err, "invalid fal client settings (--fal-upstream-override, --fal-ca-file)")
		os.Exit(1)
	}
	if err := (&controllers.FalCredentialReconciler{Fal: falClient}).SetupWithManager(mgr); err != nil {
		setupLog.Error(err, "unable to set up the FalCredential controller")
		os.Exit(1)
	}

	// --- Pod webhook and its certificates (controllers/podwebhook) ---
	if webhookNS == "" {
		webhookNS = "falguard-system"
	}
	if _, err := podwebhook.Setup(mgr, podwebhook.Options{
		Host:              webhookHost,
		Port:              webhookPort,
		CertDir:           webhookCertDir,
		SelfManagedCerts:  selfManagedCerts,
		Namespace:         webhookNS,
		ServiceName:       webhookServiceName,
		WebhookConfigName: webhookConfig,
		CertHosts:         podwebhook.SplitHosts(webhookCertHosts),
		Inject:            injectCfg,
	}); err != nil {
		setupLog.Error(err, "unable to set up the pod webhook")
		os.Exit(1)
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		setupLog.Error(err, "unable to set up health check")
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		setupLog.Error(err, "unable to set up ready check")
		os.Exit(1)
	}
	setupLog.Info("starting manager", "version", version)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "problem running manager")
		os.Exit(1)
	}
}
