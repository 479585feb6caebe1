# Minion: every target delegates to a script so each owner edits one file.
SHELL := /bin/bash
export CARGO_TERM_COLOR ?= never

.PHONY: setup image agent build install test bench fuzz run quickstart fmt lint
setup:        ## install Debian packages, start libvirtd/virtlogd (idempotent)
	scripts/setup-host.sh
image:        ## build (or reuse from /var/cache/minion/images) the guest images
	images/build.sh all
agent:        ## the static in-guest agent
	scripts/build-agent.sh
build: agent  ## release binaries: minion, miniond, minion-agent
	cargo build --release -p minion-cli -p miniond
install:      ## binaries, agent, examples, docs under /usr/local; systemd units; the minion group
	scripts/install.sh
test:         ## the whole suite: unit, integration, end-to-end with real VMs (what .ci/run calls)
	scripts/test.sh
bench:        ## the benchmarks the issues name
	scripts/bench.sh
fuzz:         ## every fuzz target for FUZZ_SECS (300) seconds (make test runs 10 s each)
	FUZZ_SECS=$${FUZZ_SECS:-300} scripts/fuzz.sh
run quickstart: ## set up, build, start miniond, run the example task in a fresh VM
	scripts/quickstart.sh
fmt:
	cargo fmt --all
lint:
	cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings
