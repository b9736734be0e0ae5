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

.PHONY: e2e
e2e: ## Run the end-to-end suite on the demo harness (injection, proxy/token/relay, reloads, rotations, manager restart).
	go test -count=1 -tags e2e -timeout $(E2E_TIMEOUT) $(E2E_FLAGS) ./hack/e2e/

TEST_TARGETS += e2e
