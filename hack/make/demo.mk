# Placeholder until the demo lands (hack/demo); the demo owner replaces this file.
.PHONY: demo
demo: ## Bring up the whole system on a local control plane (not yet).
	@echo "make demo: not yet; the end-to-end demo lands with the demo issue."
