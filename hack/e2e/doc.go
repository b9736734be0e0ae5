// Package e2e is falguard's end-to-end suite (`make e2e`, part of `make
// test`): the demo harness (hack/demo) with the real manager binary, the
// envtest control plane, fakefal, an emulated kubelet and fal's official JS
// client, driven through one story with assertions at every step. Once the
// injected pod's sidecar is ready, the examples app teams are pointed at
// (examples/http/curl.sh, examples/node/realtime-relay.mjs and queue.mjs) run
// against it with only the env the app container was started with, so they
// cannot rot; `make e2e` runs npm ci in examples/node first when needed.
//
// The tests are behind the e2e build tag so `go test ./...` does not run the
// suite a second time: `go test -tags e2e ./hack/e2e/`.
package e2e
