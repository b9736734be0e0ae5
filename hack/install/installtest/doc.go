//go:build installtest

// Package installtest proves falguard's install paths: the Helm chart
// (lint, template, schema), its agreement with config/, and real installs of
// the chart and of dist/install.yaml into an envtest API server.
//
// Run it with `make test-install`, which builds helm, kubectl and
// dist/install.yaml and passes them in HELM, KUBECTL, INSTALL_YAML and
// KUBEBUILDER_ASSETS. The build tag keeps it out of a plain `go test ./...`.
package installtest
