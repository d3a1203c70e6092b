# The two commands a new user needs: `make run` (a real local sweep) and `make test`.
# Each does the set-up it needs first: the project-local Python environment with the pinned
# torch wheel (libtorch for the worker) and the test engines, then the release build.
CARGO ?= cargo
SPEC ?= sweeps/quickstart.toml
OUT ?= out
WORKERS ?= 2

.PHONY: setup cluster-setup build build-against-torch run test bench clean

setup:
	@bash scripts/setup.sh

# As root with apt-get (CI): Debian's Slurm and munge for tests/tests/slurm.rs; elsewhere it
# says why it does nothing and those tests skip themselves (in CI it fails instead).
cluster-setup:
	@bash scripts/cluster-setup.sh

build: setup
	$(CARGO) build --release --workspace --bins

# The worker and the bench against another installed torch (2.11 or 2.13), into their own target
# folder (default target-torch-<release>): make build-against-torch TORCH_PYTHON=/path/to/python
build-against-torch:
	@test -n "$(TORCH_PYTHON)" || { echo "make build-against-torch: set TORCH_PYTHON=/path/to/python (the interpreter whose torch to build against)" >&2; exit 2; }
	bash scripts/build-against-torch.sh $(TORCH_PYTHON) $(if $(TARGET_DIR),--target-dir $(TARGET_DIR))

run: build
	./target/release/cbsweep run $(SPEC) --workers $(WORKERS) --out $(OUT)

# A test whose prerequisite is missing here (root, a package, a tmpfs) passes after adding a
# line to TARGET/skipped-tests.txt, which is listed at the end; where every test must run
# (CBSWEEP_REQUIRE_ALL=1, as .ci/run sets, or CI=true) it fails instead, saying what is missing.
SKIPPED = $${CARGO_TARGET_DIR:-target}/skipped-tests.txt
test: build cluster-setup
	@rm -f $(SKIPPED); status=0; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --release --workspace --no-fail-fast || status=$$?; \
	else \
		$(CARGO) test --release --workspace --no-fail-fast || status=$$?; \
	fi; \
	if [ -s $(SKIPPED) ]; then \
		echo "make test: $$(wc -l < $(SKIPPED)) tests, or parts of them, SKIPPED here (each passed without running):"; \
		sed 's/^/  /' $(SKIPPED); \
	fi; \
	exit $$status

bench: build
	./target/release/cbsweep-bench all

clean:
	$(CARGO) clean
	rm -rf .venv $(OUT)
