# The whole system on one machine (hack/demo): the envtest control plane, the
# CRDs and webhook configuration from config/, the real manager, fakefal, and
# an emulated kubelet running an injected pod's sidecar and fal's official
# client. Needs Go, Node >= 20 and npm; nothing else.
DEMO_FLAGS ?=
E2E_TIMEOUT ?= 10m
E2E_FLAGS ?=

.PHONY: demo
demo: ## Bring falguard up end to end on 127.0.0.1 and show a key rotation under load; DEMO_EXIT=1 exits after the summary.
	@mkdir -p $(LOCALBIN)
	@echo ">> building the demo harness (the first build on a machine compiles for a few minutes; later ones take seconds)"
	@go build -o $(LOCALBIN)/falguard-demo ./hack/demo/cmd/demo
	@$(LOCALBIN)/falguard-demo $(DEMO_FLAGS)

# The e2e suite also runs the Node examples in examples/node, which need their
# pinned packages. npm writes node_modules/.package-lock.json on every install,
# so it is the stamp: `npm ci` runs only when it is missing or older than the
# lock (the demo harness checks hack/demo/js the same way), and the npm ci of
# `make test-docs` refreshes the same file.
E2E_EXAMPLES_NODE_DIR := examples/node
E2E_EXAMPLES_NODE_STAMP := $(E2E_EXAMPLES_NODE_DIR)/node_modules/.package-lock.json

$(E2E_EXAMPLES_NODE_STAMP): $(E2E_EXAMPLES_NODE_DIR)/package-lock.json $(E2E_EXAMPLES_NODE_DIR)/package.json
	cd $(E2E_EXAMPLES_NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: e2e
e2e: $(E2E_EXAMPLES_NODE_STAMP) ## Run the end-to-end suite on the demo harness (injection, the examples/, proxy/token/relay, reloads, rotations, manager restart).
	go test -count=1 -tags e2e -timeout $(E2E_TIMEOUT) $(E2E_FLAGS) ./hack/e2e/

TEST_TARGETS += e2e
