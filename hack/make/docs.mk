# Docs, examples and dashboards (issue 9): every example in examples/ runs
# against the real sidecar binary and fakefal; every metric the Grafana
# dashboard, the PrometheusRule and the docs name must be one the code exports,
# every alert's runbook_url must point at a section of docs/platform-teams.md,
# and the docs must explain every sidecar error code and controller reason
# (hack/observability; helm renders the chart when bin/helm-* exists).
# The Node examples' packages are installed by the stamp rule in demo.mk
# (shared with `make e2e`), so npm ci runs only when the lock file changed.

.PHONY: test-docs
test-docs: helm examples/node/node_modules/.package-lock.json ## Run the examples against the sidecar and fakefal, and check the dashboard and alerts against the exported metrics.
	HELM=$(HELM) go test -count=1 -timeout 5m ./hack/observability/
	go test -count=1 -timeout 5m -tags examples ./examples/

TEST_TARGETS += test-docs
