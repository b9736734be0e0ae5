# Docs, examples and dashboards (issue 9): every example in examples/ runs
# against the real sidecar binary and fakefal; every metric the Grafana
# dashboard, the PrometheusRule and the docs name must be one the code exports,
# every alert's runbook_url must point at a section of docs/platform-teams.md,
# and the docs must explain every sidecar error code and controller reason
# (hack/observability; helm renders the chart when bin/helm-* exists).
EXAMPLES_NODE_DIR := examples/node

.PHONY: test-docs
test-docs: helm ## Run the examples against the sidecar and fakefal, and check the dashboard and alerts against the exported metrics.
	cd $(EXAMPLES_NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	HELM=$(HELM) go test -count=1 -timeout 5m ./hack/observability/
	go test -count=1 -timeout 5m -tags examples ./examples/

TEST_TARGETS += test-docs
