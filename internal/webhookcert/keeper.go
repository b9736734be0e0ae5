package webhookcert

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
)

// Secret data keys. tls.crt/tls.key are the usual kubernetes.io/tls names, so
// the Secret can also be mounted and served from a cert dir.
const (
	KeyCACert   = "ca.crt"
	KeyCAKey    = "ca.key"
	KeyCABundle = "ca-bundle.crt"
	KeyTLSCert  = corev1.TLSCertKey
	KeyTLSKey   = corev1.TLSPrivateKeyKey
)

// Keeper serves the current certificate from the Secret. Every replica runs
// one; it never writes.
type Keeper struct {
	clientset  kubernetes.Interface
	namespace  string
	secretName string
	now        func() time.Time
	log        logr.Logger

	current atomic.Pointer[served]
	swaps   atomic.Int64
}

type served struct {
	tls      *tls.Certificate
	notAfter time.Time
	serial   string
}

// NewKeeper watches Secret namespace/secretName through clientset.
func NewKeeper(clientset kubernetes.Interface, namespace, secretName string, log logr.Logger) *Keeper {
	return &Keeper{clientset: clientset, namespace: namespace, secretName: secretName, now: time.Now, log: log}
}

// GetCertificate is tls.Config.GetCertificate: every handshake gets the
// latest certificate, so a renewal needs no restart.
func (k *Keeper) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s := k.current.Load()
	if s == nil {
		return nil, errors.New("webhook serving certificate not loaded yet")
	}
	return s.tls, nil
}

// ReadyCheck is a healthz checker: not ready until a certificate that has not
// expired is loaded, so no traffic reaches a replica that would fail TLS.
func (k *Keeper) ReadyCheck(*http.Request) error {
	s := k.current.Load()
	if s == nil {
		return fmt.Errorf("no serving certificate yet from Secret %s/%s (the leader creates it)", k.namespace, k.secretName)
	}
	if !k.now().Before(s.notAfter) {
		return fmt.Errorf("serving certificate expired at %s and was not renewed", s.notAfter.Format(time.RFC3339))
	}
	return nil
}

// Serial returns the serial number of the certificate being served ("" if none).
func (k *Keeper) Serial() string {
	if s := k.current.Load(); s != nil {
		return s.serial
	}
	return ""
}

// Swaps counts certificate changes since start.
func (k *Keeper) Swaps() int64 { return k.swaps.Load() }

// load takes tls.crt/tls.key from a Secret if they are valid and new.
func (k *Keeper) load(sec *corev1.Secret) {
	if sec == nil || sec.Name != k.secretName {
		return
	}
	kp, err := parseKeyPair(sec.Data[KeyTLSCert], sec.Data[KeyTLSKey])
	if err != nil {
		k.log.Error(err, "ignoring unusable serving certificate in Secret", "secret", k.namespace+"/"+k.secretName)
		return
	}
	serial := kp.cert.SerialNumber.Text(16)
	if cur := k.current.Load(); cur != nil && cur.serial == serial {
		return
	}
	pair, err := tls.X509KeyPair(kp.certPEM, kp.keyPEM)
	if err != nil {
		k.log.Error(errors.New("tls key pair rejected"), "ignoring serving certificate", "secret", k.namespace+"/"+k.secretName)
		return
	}
	k.current.Store(&served{tls: &pair, notAfter: kp.cert.NotAfter, serial: serial})
	k.swaps.Add(1)
	certExpiry.WithLabelValues("serving").Set(float64(kp.cert.NotAfter.Unix()))
	k.log.Info("serving webhook certificate", "serial", serial, "notAfter", kp.cert.NotAfter.Format(time.RFC3339))
}

// Start watches the one Secret (field selector on its name) until ctx ends.
func (k *Keeper) Start(ctx context.Context) error {
	lw := toolscache.NewListWatchFromClient(k.clientset.CoreV1().RESTClient(), "secrets", k.namespace,
		fields.OneTermEqualSelector("metadata.name", k.secretName))
	_, informer := toolscache.NewInformerWithOptions(toolscache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.Secret{},
		ResyncPeriod:  10 * time.Minute,
		Handler: toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { k.load(asSecret(obj)) },
			UpdateFunc: func(_, obj any) { k.load(asSecret(obj)) },
		},
	})
	informer.RunWithContext(ctx)
	return nil
}

// NeedLeaderElection is false: every replica serves.
func (k *Keeper) NeedLeaderElection() bool { return false }

func asSecret(obj any) *corev1.Secret {
	s, _ := obj.(*corev1.Secret)
	return s
}
