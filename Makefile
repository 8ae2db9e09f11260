# Developer entry points; see README.md.
.PHONY: run fleet test lint fmt clean-keys contract-tools sdk-tools bench soak mutants

# First run creates a dev signing key + API key in $STREAMTOKEN_KEYS_DIR (default keys/) and prints the key.
# Serves the browser demo too (loopback only; STREAMTOKEN_DEMO=off to leave it out).
run:
	cargo run --quiet -- keys init
	STREAMTOKEN_DEMO=$${STREAMTOKEN_DEMO:-on} cargo run --quiet -- serve

# A local Redis Cluster (127.0.0.1:7101-7103, FLEET_REDIS_PORTS) and two instances on :8081 and :8082
# (FLEET_HTTP_PORTS) sharing it and the keys dir; prints the dev API key on a fresh keys dir; Ctrl-C
# stops all. Needs redis-server and redis-cli; data and logs in target/fleet/.
fleet:
	@bash tests/fleet.sh

# Ends by listing what was skipped locally (e.g. no redis-server); with CI=true nothing may skip.
test:
	@mkdir -p target/tmp && rm -f target/tmp/skipped-tests.txt
	cargo test --all-targets
	cargo test --doc
	bash tests/smoke_make_run.sh
	bash tests/browser/run.sh
	bash tests/contract/run.sh
	bash tests/sdk/run.sh
	@bash tests/report_skips.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Removes generated key material but keeps the tracked keys/README.md and keys/.gitignore.
clean-keys:
	test ! -d keys || find keys -mindepth 1 -maxdepth 1 ! -name README.md ! -name .gitignore -exec rm -rf {} +

# Pinned schemathesis / openapi-python-client / openapi-spec-validator for the contract tests.
contract-tools:
	bash tests/contract/install.sh

# The pinned AssemblyAI Python SDK (and trustme for its test CA) for the SDK test (tests/sdk/).
sdk-tools:
	bash tests/sdk/install.sh

# Flake check (not part of `make test`): the integration suite N times beside a CPU-bound process.
N ?= 10
soak:
	N=$(N) bash tests/soak.sh

# Mutation testing (not part of `make test`) of the code that guards single use, verification,
# tenancy and admission; survivors must be killed or explained in tests/MUTANTS.md.
mutants:
	bash tests/mutants.sh

# Benchmarks (not part of `make test`): criterion + wrk load runs + memory footprint, one table.
bench:
	bash benches/http.sh
