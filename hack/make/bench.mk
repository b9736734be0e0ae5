# Benchmarks (issue #8): falguard-sidecar side by side with nginx, fal's
# official @fal-ai/server-proxy and no hop, on loopback against fakefal.
# `make bench` writes docs/benchmarks.md (under 10 minutes on 2 cores);
# `make bench-quick` runs every workload with tiny counts and only checks that
# each produced numbers (it asserts nothing about speed), as part of make test.

BENCH_OFFICIAL_DIR := hack/bench/officialproxy
# Own copies, so a run never swaps a binary that the demo or a test is using.
BENCH_SIDECAR := $(LOCALBIN)/bench/falguard-sidecar
BENCH_BIN := $(LOCALBIN)/bench/falguard-bench
# Fresh machines (CI) have no nginx: install Debian's package once.
BENCH_SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: bench-deps
bench-deps: $(BENCH_OFFICIAL_DIR)/node_modules/.package-lock.json
	@# policy-rc.d (101 = "do not start") keeps the package from starting a system
	@# nginx on :80 during the install; the bench runs its own on loopback only.
	@command -v nginx >/dev/null 2>&1 || { echo "bench: installing nginx (Debian package)"; \
		rc=/usr/sbin/policy-rc.d; made=; \
		if [ ! -e $$rc ]; then printf '#!/bin/sh\nexit 101\n' | $(BENCH_SUDO) tee $$rc >/dev/null && $(BENCH_SUDO) chmod +x $$rc && made=1; fi; \
		$(BENCH_SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(BENCH_SUDO) apt-get install -y -qq nginx >/dev/null; st=$$?; \
		[ -z "$$made" ] || $(BENCH_SUDO) rm -f $$rc; exit $$st; }
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BENCH_SIDECAR) ./sidecar/cmd/falguard-sidecar
	go build -o $(BENCH_BIN) ./hack/bench

$(BENCH_OFFICIAL_DIR)/node_modules/.package-lock.json: $(BENCH_OFFICIAL_DIR)/package-lock.json $(BENCH_OFFICIAL_DIR)/package.json
	cd $(BENCH_OFFICIAL_DIR) && npm ci --no-audit --no-fund --loglevel=error

##@ Benchmarks

.PHONY: bench
bench: bench-deps ## Run the full benchmark (under 10 min on 2 cores) and write docs/benchmarks.md.
	$(BENCH_BIN) -out docs/benchmarks.md -sidecar $(BENCH_SIDECAR) -official-dir $(BENCH_OFFICIAL_DIR) -nginx $$(command -v nginx)

.PHONY: bench-quick
bench-quick: bench-deps ## Run every benchmark workload with tiny counts (checks the harness, not speed).
	$(BENCH_BIN) -quick -out $(LOCALBIN)/bench/bench-quick.md -sidecar $(BENCH_SIDECAR) -official-dir $(BENCH_OFFICIAL_DIR) -nginx $$(command -v nginx)

TEST_TARGETS += bench-quick
