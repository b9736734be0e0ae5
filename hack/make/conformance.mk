# Conformance suite: the official @fal-ai/client (pinned in
# hack/conformance/package.json) driving the real sidecar binary against
# fakefal. Needs Node >= 20 and npm (npm ci needs the committed lock file).
CONFORMANCE_DIR := hack/conformance

.PHONY: test-conformance
test-conformance: ## Run the Node conformance suite (official fal client -> sidecar -> fakefal).
	@mkdir -p $(LOCALBIN)
	go build -o $(LOCALBIN)/falguard-sidecar ./sidecar/cmd/falguard-sidecar
	go build -o $(LOCALBIN)/fakefal ./hack/fakefal/cmd/fakefal
	cd $(CONFORMANCE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	cd $(CONFORMANCE_DIR) && FALGUARD_BIN_DIR=$(LOCALBIN) node --test --test-reporter=spec \
		--test-concurrency=1 --test-timeout=60000 test/*.test.mjs

TEST_TARGETS += test-conformance
