#!/usr/bin/env bash
# Builds helm from the Go module proxy once per machine into a per-version cache
# outside the clone (every CI run starts from a clean clone), then links it into
# ./bin. Prints the path of the binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
version=${HELM_VERSION:-v3.21.4}
cache=${FALGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/falguard}/tools
bin=$cache/helm-$version
link=$root/bin/helm-$version

if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  exec 9>"$bin.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    echo ">> building helm $version from the Go module proxy (once per machine, cached in $cache)" >&2
    tmp=$(mktemp -d "$cache/.helm-build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    # The same -X flags as helm's Makefile: its version, and the Kubernetes
    # version it assumes for `helm template`/`lint` (1.<client-go minor>, here 1.36).
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${HELM_K8S_MINOR:-36}"
    done
    # Outside any module so the project's go.mod does not constrain helm's deps.
    (cd "$tmp" && GOFLAGS=-mod=mod GOBIN="$tmp" CGO_ENABLED=0 \
      go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version")
    mv "$tmp/helm" "$bin"
  fi
fi
mkdir -p "$(dirname "$link")"
if [ "$(readlink "$link" 2>/dev/null)" != "$bin" ]; then
  rm -f "$link"
  ln -s "$bin" "$link"
fi
echo "$link"
