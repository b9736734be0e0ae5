#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver, etcd, kubectl) from the Go
# module proxy into a per-version cache outside the clone, then links it into
# ./bin/k8s/<version>. Every clone on this machine (CI's too) shares the cache.
# Prints the assets directory for KUBEBUILDER_ASSETS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${ENVTEST_K8S_VERSION:-v1.37.2}
cache=${FALGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/falguard}/envtest/$version
link=$root/bin/k8s/$version

have() { [ -x "$cache/kube-apiserver" ] && [ -x "$cache/etcd" ] && [ -x "$cache/kubectl" ]; }

if ! have; then
  mkdir -p "$cache"
  exec 9>"$cache.lock"
  flock 9
  if ! have; then
    echo ">> building the envtest control plane $version from the Go module proxy" >&2
    echo ">> (kube-apiserver, etcd, kubectl: a one-time build of several minutes on 2 cores," >&2
    echo ">>  cached in $cache for every later run)" >&2
    minor=${version#v1.}; minor=${minor%%.*}
    pkg=k8s.io/component-base/version
    ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version"
    tmp=$(mktemp -d "$cache.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cd "$root/hack/tools"
    start=$(date +%s)
    CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    echo ">> kube-apiserver built ($(( $(date +%s) - start ))s)" >&2
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" ./etcd
    echo ">> etcd built ($(( $(date +%s) - start ))s)" >&2
    CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
    echo ">> kubectl built ($(( $(date +%s) - start ))s)" >&2
    mv "$tmp"/* "$cache/"
  fi
fi
mkdir -p "$(dirname "$link")"
if [ "$(readlink "$link" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$link"
  ln -s "$cache" "$link"
fi
echo "$link"
