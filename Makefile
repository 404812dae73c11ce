# atkafka-host: build, test and run.
#
#   make build       the built-in formatter guests (wasm32-wasip2), then target/release/atkafka-host
#   make test        everything `make test-deps` needs, then every test (unit, fixtures, end to end)
#   make run         streams the live firehose into Kafka; starts a local Tansu broker on
#                    127.0.0.1:9092 unless BOOTSTRAP_SERVERS is given
#   make test-deps   the wasm32-wasip2 target, the Tansu broker and the PDS the tests run against
#   make bench       the benchmark of the whole path (see the README's Performance section); writes
#                    target/bench/results.md
#   make examples    the example formatter of guest-formatters/examples in Rust, JavaScript and
#                    Python, as target/examples/posts-{rust,js,python}.wasm

CARGO ?= cargo
GUEST_TARGET_DIR := target/guest-build
GUESTS := -p atkafka-formatter-standard -p atkafka-formatter-osprey
# Misbehaving guests that the sandbox tests load.
TEST_GUESTS := -p atkafka-formatter-hostile -p atkafka-formatter-hostile-import
HOST_BIN := $(CURDIR)/target/release/atkafka-host

.PHONY: build guests test test-deps run
.PHONY: examples bench

guests:
	scripts/install-deps.sh wasm-target
	$(CARGO) build --profile guest --target wasm32-wasip2 $(GUESTS) $(TEST_GUESTS) --target-dir $(GUEST_TARGET_DIR)

build: guests
	scripts/install-deps.sh system
	$(CARGO) build --release -p atkafka-host

test-deps:
	scripts/install-deps.sh wasm-target tansu pds

test: test-deps build examples
	ATKAFKA_HOST_BIN=$(HOST_BIN) $(CARGO) test -p atkafka-host -p atkafka-shape -p atkafka-integration-tests

run: build
	scripts/run-local.sh $(HOST_BIN)

examples:
	scripts/install-deps.sh wasm-target examples
	CARGO=$(CARGO) scripts/build-examples.sh

bench: build
	scripts/install-deps.sh tansu
	$(CARGO) build --release -p atkafka-integration-tests --bin bench
	ATKAFKA_HOST_BIN=$(HOST_BIN) target/release/bench
