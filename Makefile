# cilium-rs — run · build · lint · test · bench · install · plugin · plugin-spec
# Every target that needs the machine prepared runs scripts/setup.sh first (idempotent).

CARGO ?= cargo
PREFIX ?= /usr/local
BIN := target/release/cilium-rs
export CILIUM_RS_BIN := $(CURDIR)/target/debug/cilium-rs

.PHONY: run build setup lint test test-unit soak bench install plugin plugin-spec clean-test-leftovers

## run: install what is missing, build, start dockerd if needed, run the daemon in the foreground
run: setup build
	$(BIN) daemon

build:
	$(CARGO) build --release -p cilium-rs

setup:
	./scripts/setup.sh

## lint: the one lint gate (also part of `make test`)
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	clang-format --dry-run --Werror bpf-programs/bpf/*.c bpf-programs/bpf/lib/*.h

## test: install what is missing, start dockerd if needed, run every test (unit, handler,
## privileged, end-to-end against dockerd) and the lint gate; non-zero on any failure
test: setup
	$(CARGO) build --workspace --all-targets --locked
	$(MAKE) lint
	$(CARGO) test --workspace --locked --no-fail-fast

## test-unit: only the tests that need neither root nor dockerd
test-unit:
	$(CARGO) test --workspace --lib --locked
	$(CARGO) test -p cilium-rs --test handlers --locked
	$(CARGO) test -p cilium-rs --test hostile_input --locked
	$(CARGO) test -p plugin-spec --locked

## soak: the long soak (random cycles with kill -9, checked after each; ≤ 15 min); prints
## cycles, faults injected and differences found. `make test` runs a short one.
SOAK_CYCLES ?= 500
soak: setup
	$(CARGO) build --workspace --all-targets --locked
	CRS_SOAK_CYCLES=$(SOAK_CYCLES) CRS_SOAK_SEED=$${CRS_SOAK_SEED:-random} $(CARGO) test -p integration --test soak --locked -- --nocapture

## bench: the performance matrix (loopback, veth pair, Docker bridge, cilium-rs), docker run
## and plugin latency side by side (markdown tables; target/bench/results.json)
bench: setup
	$(CARGO) build --release --locked -p cilium-rs -p integration
	CILIUM_RS_BIN=$(CURDIR)/$(BIN) ./target/release/bench

## install: the binary and the systemd units (socket activation, ordered before docker.service)
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/cilium-rs
	install -D -m 0644 contrib/systemd/cilium-rs.socket $(DESTDIR)/etc/systemd/system/cilium-rs.socket
	install -D -m 0644 contrib/systemd/cilium-rs.service $(DESTDIR)/etc/systemd/system/cilium-rs.service

## plugin: the managed Docker plugin cilium-rs:latest (rootfs and config.json in target/plugin),
## created disabled, replacing an older one; then `docker plugin enable cilium-rs:latest`.
## PLUGIN=name:tag for another name, FORCE=1 to replace one that networks still use.
plugin: setup build
	install -D -m 0644 contrib/tmpfiles.d/cilium-rs.conf $(DESTDIR)/etc/tmpfiles.d/cilium-rs.conf
	install -d -m 0700 /var/lib/cilium-rs
	install -d -m 0755 /run/cilium-rs
	./scripts/plugin.sh $(BIN)

## plugin-spec: the legacy plugin discovery spec for hosts that prefer a spec file over the socket path
plugin-spec:
	install -D -m 0644 plugin-spec/cilium-rs.spec $(DESTDIR)/etc/docker/plugins/cilium-rs.spec
