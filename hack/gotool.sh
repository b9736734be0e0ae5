#!/usr/bin/env bash
# Usage: hack/gotool.sh NAME PACKAGE VERSION
# Builds a Go tool at a pinned version from the Go module proxy into a cache
# outside the clone (shared by every clone on this machine, CI's included) and
# links it into ./bin/NAME-VERSION. Prints the linked path.
set -euo pipefail
name=$1 pkg=$2 version=$3
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${FALGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/falguard}/tools
bin=$cache/$name-$version
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  exec 9>"$bin.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    echo ">> building $name $version from the Go module proxy (once per machine)" >&2
    tmp=$(mktemp -d "$cache/.tmp-$name.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    GOBIN=$tmp CGO_ENABLED=0 go install "$pkg@$version"
    mv "$tmp/$(basename "${pkg%/v[0-9]*}")" "$bin" 2>/dev/null || mv "$tmp"/* "$bin"
  fi
fi
mkdir -p "$root/bin"
ln -sfn "$bin" "$root/bin/$name-$version"
echo "$root/bin/$name-$version"
