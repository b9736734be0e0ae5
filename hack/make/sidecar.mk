##@ Sidecar

.PHONY: test-sidecar
test-sidecar: ## Run only the sidecar's Go tests (unit, and integration over TLS against fakefal).
	go test -count=1 ./sidecar/...
