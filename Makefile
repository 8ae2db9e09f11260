# Developer entry points; see README.md.
.PHONY: run test lint fmt clean-keys contract-tools bench

# First run creates a dev signing key + API key in $STREAMTOKEN_KEYS_DIR (default keys/) and prints the key.
run:
	cargo run --quiet -- keys init
	cargo run --quiet -- serve

test:
	cargo test --all-targets
	bash tests/smoke_make_run.sh
	bash tests/browser/run.sh
	bash tests/contract/run.sh

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

# Benchmarks (not part of `make test`): criterion + wrk load runs + memory footprint, one table.
bench:
	bash benches/http.sh
