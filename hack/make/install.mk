# Install paths: `kubectl apply` manifests, the Helm chart and the container
# images (issue 6). Tools are built from the Go module proxy into a cache
# outside the clone and linked into ./bin (see hack/install/helm.sh).

HELM_VERSION ?= v3.21.4
HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)
KUBECTL ?= $(ENVTEST_ASSETS)/kubectl
IMAGE_REGISTRY ?= ghcr.io/falguard
IMAGE_TAG ?= $(VERSION)
MANAGER_IMG ?= $(IMAGE_REGISTRY)/falguard-manager:$(IMAGE_TAG)
SIDECAR_IMG ?= $(IMAGE_REGISTRY)/falguard-sidecar:$(IMAGE_TAG)
IMAGE_ARCH ?= $(shell go env GOARCH)
# The image references written in config/manager and the chart's appVersion;
# build-installer swaps them for MANAGER_IMG and SIDECAR_IMG.
BASE_TAG := 0.1.0

TEST_TARGETS += test-install

##@ Install

.PHONY: helm
helm: ## Build (once per machine) and link helm into ./bin.
	@HELM_VERSION=$(HELM_VERSION) hack/install/helm.sh >/dev/null

.PHONY: build-installer
build-installer: envtest ## Render config/default into dist/install.yaml (MANAGER_IMG, SIDECAR_IMG set the images).
	@mkdir -p dist
	$(KUBECTL) kustomize config/default \
		| sed -e 's#$(IMAGE_REGISTRY)/falguard-manager:$(BASE_TAG)#$(MANAGER_IMG)#g' \
		      -e 's#$(IMAGE_REGISTRY)/falguard-sidecar:$(BASE_TAG)#$(SIDECAR_IMG)#g' > dist/install.yaml.tmp
	@mv dist/install.yaml.tmp dist/install.yaml
	@echo "wrote dist/install.yaml ($(MANAGER_IMG), $(SIDECAR_IMG))"

.PHONY: chart-sync
chart-sync: ## Copy CRDs and the manager RBAC into the chart and regenerate its README values table.
	go run ./hack/install/chartgen

.PHONY: chart-crds
chart-crds: chart-sync ## Same as chart-sync (the CRDs in charts/falguard/crds come from config/crd/bases).

.PHONY: chart-verify
chart-verify: ## Fail when the chart's CRDs, RBAC or README are out of step (run chart-sync to fix).
	go run ./hack/install/chartgen -check

.PHONY: chart-package
chart-package: helm ## Package the chart into dist/.
	@mkdir -p dist
	$(HELM) package charts/falguard -d dist

.PHONY: images
images: ## Build the manager and sidecar images (no Docker) as OCI archives under dist/.
	cd hack/images && go run . build -root ../.. -out ../../dist -registry $(IMAGE_REGISTRY) -tag $(IMAGE_TAG) -arch $(IMAGE_ARCH)

.PHONY: test-install
test-install: envtest helm build-installer ## Test the install paths: chart lint/template/schema, drift, helm and kubectl installs on envtest, images.
	go run ./hack/install/chartgen -check
	@# The images are built as `make images` builds them, then taken apart and run.
	$(MAKE) --no-print-directory images IMAGE_TAG=installtest
	cd hack/images && IMAGES_DIR=$(CURDIR)/dist IMAGE_TAG=installtest go test -count=1 ./...
	KUBEBUILDER_ASSETS=$(ENVTEST_ASSETS) HELM=$(HELM) KUBECTL=$(KUBECTL) INSTALL_YAML=$(CURDIR)/dist/install.yaml \
		go test -count=1 -timeout 10m -tags installtest ./hack/install/...
