# falguard Makefile (kubebuilder layout). Every tool is built from the Go module
# proxy at a pinned version into ./bin on first use; nothing is assumed to be
# installed but Go (and Node for the conformance suite).

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LOCALBIN ?= $(CURDIR)/bin
ENVTEST_K8S_VERSION ?= v1.37.2
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0

CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
ENVTEST_ASSETS = $(LOCALBIN)/k8s/$(ENVTEST_K8S_VERSION)

# Extra suites (conformance, e2e, chart, bench quick) register themselves here
# from hack/make/*.mk so `make test` runs everything.
TEST_TARGETS := verify-generated vet lint test-go

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-20s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate the CRD, RBAC and webhook manifests from markers.
	$(CONTROLLER_GEN) rbac:roleName=falguard-manager-role crd paths="./api/..." paths="./controllers/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: verify-generated
verify-generated: controller-gen ## Fail when generated CRDs, RBAC or deepcopy are stale.
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; stale=0; \
	$(CONTROLLER_GEN) rbac:roleName=falguard-manager-role crd paths="./api/..." paths="./controllers/..." \
		output:crd:artifacts:config=$$tmp/crd output:rbac:artifacts:config=$$tmp/rbac; \
	diff -ru config/crd/bases $$tmp/crd || stale=1; \
	diff -u config/rbac/role.yaml $$tmp/rbac/role.yaml || stale=1; \
	cp api/v1alpha1/zz_generated.deepcopy.go $$tmp/deepcopy.go; \
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."; \
	diff -u $$tmp/deepcopy.go api/v1alpha1/zz_generated.deepcopy.go || stale=1; \
	if [ $$stale = 1 ]; then echo "generated files are stale: run 'make manifests generate' and commit the result"; exit 1; fi; \
	echo "generated files are up to date"

.PHONY: fmt
fmt: ## Run gofmt over the code.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: lint
lint: golangci-lint ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

.PHONY: envtest
envtest: ## Build (once per machine) and link the envtest control plane into ./bin.
	@ENVTEST_K8S_VERSION=$(ENVTEST_K8S_VERSION) hack/envtest.sh >/dev/null

.PHONY: test
test: ## Run every test suite: generated-file check, vet, Go tests on a real API server, and the suites in hack/make.
	@$(MAKE) --no-print-directory -k $(TEST_TARGETS)

.PHONY: test-go
test-go: envtest ## Run the Go tests (unit and envtest).
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) go test -count=1 -timeout 20m ./...

##@ Build

.PHONY: build
build: ## Build the manager and the sidecar into ./bin.
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(LOCALBIN)/manager .
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(LOCALBIN)/falguard-sidecar ./sidecar/cmd/falguard-sidecar

.PHONY: run
run: manifests generate ## Run the manager against the cluster in ~/.kube/config.
	go run . --leader-elect=false

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN)
$(CONTROLLER_GEN):
	@hack/gotool.sh controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen $(CONTROLLER_TOOLS_VERSION) >/dev/null

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT)
$(GOLANGCI_LINT):
	@hack/gotool.sh golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint $(GOLANGCI_LINT_VERSION) >/dev/null

-include hack/make/*.mk
