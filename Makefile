# The two commands of the README (`make demo`, `make test`) and what they need.
#
# `make setup` is idempotent: each install step leaves a stamp file inside what
# it installed, and runs again only when its manifest is newer than the stamp
# (or the installed tree was removed).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV := .venv
VPY := $(CURDIR)/$(VENV)/bin/python
PY_STAMP := $(VENV)/.ocpp-nodes-installed
SHIM_STAMP := js_shim/node_modules/.ocpp-nodes-installed
TOOLS_STAMP := tools/node/node_modules/.ocpp-nodes-installed
BROWSER_STAMP := tools/node/node_modules/.ocpp-nodes-chromium
CHROMIUM := /usr/bin/chromium
MOSQUITTO_STAMP := $(VENV)/.ocpp-nodes-mosquitto
MOSQUITTO := /usr/sbin/mosquitto
HAPROXY_STAMP := $(VENV)/.ocpp-nodes-haproxy
HAPROXY := /usr/sbin/haproxy
NODE_RED := $(CURDIR)/tools/node/node_modules/.bin/node-red

DEMO_DIR := .local/demo
DEMO_PORT := 1880

PY_SOURCES := ocpp_nodes tests scripts bench

# Node's test runner picks these names when given a directory; listing them
# here keeps the command the same on every Node version (22+ takes globs).
SHIM_TESTS = $(shell find tests/shim -type f \( -name '*.test.js' -o -name '*.test.mjs' \
	-o -name '*.test.cjs' -o -name '*-test.js' -o -name '*_test.js' -o -name 'test-*.js' \
	-o -name 'test.js' \) 2>/dev/null | sort)

.PHONY: help setup demo fleet-demo test test-py test-shim lint pack validate clean bench bench-limits screenshots

help:
	@echo "make setup   install the Python venv, the npm packages and, when missing, the Debian packages the tests run (idempotent)"
	@echo "make demo    start Node-RED on http://127.0.0.1:$(DEMO_PORT) with flows/demo.json"
	@echo "make fleet-demo  fleet mode: Mosquitto, two gateways, HAProxy and Node-RED on :$(FLEET_DEMO_PORT)"
	@echo "make test    lint, then every test (Python and shim)"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make pack    build/node-red-contrib-ocpp-nodes-<version>.tgz: shim, example flows, engine wheel"
	@echo "make validate  the Node-RED flow library's checks (node-red-dev) on that package"
	@echo "make screenshots  run the editor tests and copy the screenshots the docs show to docs/images/"

setup: $(PY_STAMP) $(SHIM_STAMP) $(TOOLS_STAMP) $(BROWSER_STAMP) $(MOSQUITTO_STAMP) $(HAPROXY_STAMP)

$(VENV)/bin/python:
	$(PYTHON3) -m venv $(VENV)

$(PY_STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install --disable-pip-version-check -q -e '.[test]'
	touch $@

$(SHIM_STAMP): js_shim/package.json $(wildcard js_shim/package-lock.json)
	cd js_shim && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# tools/node: Node-RED, the FlowFuse Dashboard (for flows/csms-live-view.json),
# the test helpers. Node-RED's registry also scans the node_modules folders
# above its own package, so the dashboard installed next to it is loaded by the
# demo's and the tests' Node-RED without being linked into their user dirs.
$(TOOLS_STAMP): tools/node/package.json $(wildcard tools/node/package-lock.json)
	npm ci --prefix tools/node --no-audit --no-fund --loglevel=error
	touch $@

# A program some tests need, from Debian: $(call debian_package,BINARY,PACKAGE,TESTS)
# touches the target (a stamp) when BINARY is there, installs PACKAGE with apt
# when it is missing and apt-get runs as root, and otherwise says which TESTS
# will be skipped (they skip and say why).
define debian_package
	@if [ -x $(1) ]; then \
		touch $@; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "make setup: installing Debian's $(2) for $(3)"; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2); \
		touch $@; \
	else \
		echo "make setup: $(1) is missing and apt-get as root is not available;" \
			"$(3) will be skipped (install $(2) to run them)"; \
	fi
endef

# The editor tests (tests/browser) drive Debian's Chromium through
# playwright-core (a browser download by playwright itself does not work
# here).
$(BROWSER_STAMP): | $(TOOLS_STAMP)
	$(call debian_package,$(CHROMIUM),chromium,the editor tests in tests/browser)

# Fleet mode's tests (tests/fleetkit.py) start a real MQTT 5 broker and a TCP
# load balancer on loopback ports.
$(MOSQUITTO_STAMP): | $(VENV)/bin/python
	$(call debian_package,$(MOSQUITTO),mosquitto,the fleet tests that need an MQTT broker)

$(HAPROXY_STAMP): | $(VENV)/bin/python
	$(call debian_package,$(HAPROXY),haproxy,the fleet tests that need a load balancer)

lint: setup
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy

# Every suite runs even when an earlier one fails; the exit status is non-zero
# if any failed.
test: setup
	@status=0; \
	$(MAKE) --no-print-directory test-py || status=1; \
	$(MAKE) --no-print-directory test-shim || status=1; \
	$(MAKE) --no-print-directory lint || status=1; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED (see above)"; fi; \
	exit $$status

test-py: setup
	OCPP_NODES_PYTHON=$(VPY) $(VPY) -m pytest -q

test-shim: setup
	@tests="$(SHIM_TESTS)"; \
	if [ -z "$$tests" ]; then \
		echo "tests/shim: no shim tests yet, skipping node --test"; \
	else \
		OCPP_NODES_PYTHON=$(VPY) NODE_PATH=$(CURDIR)/tools/node/node_modules \
			node --test $$tests; \
	fi

# Node-RED stays in the foreground (Ctrl-C stops it and the daemon with it);
# the flow is deployed from the background as soon as the admin API answers.
demo: setup
	$(VPY) scripts/prepare_userdir.py --user-dir $(DEMO_DIR) --port $(DEMO_PORT) \
		--python $(VPY) --check-port
	$(VPY) scripts/deploy_flow.py flows/demo.json --url http://127.0.0.1:$(DEMO_PORT) &
	@echo "Node-RED: http://127.0.0.1:$(DEMO_PORT)  (Ctrl-C to stop)"
	@echo "Live view: import the example csms-live-view, deploy, open http://127.0.0.1:$(DEMO_PORT)/dashboard"
	exec $(NODE_RED) -u $(DEMO_DIR)

# Fleet mode on one machine (docs/fleet.md): Mosquitto, two gateways, HAProxy
# in front of them and Node-RED on port $(FLEET_DEMO_PORT) with
# flows/fleet-demo.json; everything in .local/fleet-demo/, Ctrl-C stops it all.
FLEET_DEMO_PORT := 1881

fleet-demo: setup
	$(VPY) scripts/fleet_demo.py --dir .local/fleet-demo --port $(FLEET_DEMO_PORT) \
		--node-red $(NODE_RED)

# The screenshots the docs show (the editor's, and the live view's dashboard):
# the browser tests (tests/browser) always write theirs to .local/screenshots/;
# this copies the ones named here (the list tests/browser/test_editor.py
# checks) to docs/images/, to be committed.
DOC_IMAGES := demo-flow getting-started-flow getting-started-debug getting-started-catch csms-dialog csms-dialog-security csms-dialog-fleet cs-dialog live-view

screenshots: setup
	OCPP_NODES_PYTHON=$(VPY) $(VPY) -m pytest -q -p no:cacheprovider tests/browser
	mkdir -p docs/images
	for name in $(DOC_IMAGES); do cp .local/screenshots/$$name.png docs/images/; done

# The npm tarball: the shim with the example flows copied in as examples/
# (js_shim/examples is a symlink to flows/, which npm pack would leave out) and
# the Python engine as a wheel in python/, which the shim installs into a venv
# in the Node-RED user dir on first start (js_shim/lib/provision.js).
# setuptools builds in ./build/lib: cleared before, so no stale module lands in
# the wheel, and after.
PACK_PY := $(if $(wildcard $(VPY)),$(VPY),$(PYTHON3))

pack:
	rm -rf build/npm build/lib build/bdist.* && mkdir -p build/npm/python
	rm -f build/node-red-contrib-ocpp-nodes-*.tgz
	cp -r js_shim/package.json js_shim/README.md js_shim/lib js_shim/nodes js_shim/resources build/npm/
	cp -rL js_shim/examples build/npm/examples
	$(PACK_PY) -m pip wheel --no-deps --disable-pip-version-check -q -w build/npm/python .
	rm -rf build/lib build/bdist.*
	cd build/npm && npm pack --silent --pack-destination $(CURDIR)/build

# The Node-RED flow library's checks (node-red-dev validate) on the staged
# package; node-red-dev is fetched from npm into build/ on first use (not part
# of `make test`: it needs the npm registry). tools/validate-package.js says
# which checks could not run offline and which failures are accepted.
NODE_RED_DEV := build/node-red-dev

validate: pack
	@[ -f $(NODE_RED_DEV)/node_modules/node-red-dev/package.json ] || \
		npm install --prefix $(NODE_RED_DEV) --no-audit --no-fund --loglevel=error node-red-dev@0.1.6
	node tools/validate-package.js $(NODE_RED_DEV) build/npm build/validate.json < /dev/null

# Benchmark (not part of `make test`): ocpp-nodes vs the old npm package vs a
# do-nothing server; writes docs/benchmarks.md and docs/benchmarks.png. A full
# run took 55 minutes here (its last run: bench/results/last-run.json,
# elapsed_s), of which about 9 were the OCPP versions scenario;
# `make bench BENCH_ARGS=--versions-only` runs just that one;
# `make bench BENCH_ARGS=--fleet-only` just fleet mode's (about 7 minutes:
# direct vs fleet side by side, the MQTT floor (bench/mqtt_floor.py), 10,000
# stations over two gateways; needs mosquitto).
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.ocpp-nodes-bench-installed

$(BENCH_STAMP): bench/requirements.txt $(PY_STAMP)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r bench/requirements.txt
	touch $@

bench: setup $(BENCH_STAMP)
	ulimit -n $$(ulimit -Hn); $(VPY) bench/run.py $(BENCH_ARGS)

# Limits before TLS and HTTP (docs/benchmarks.md): a station's Heartbeats with
# 2,000 idle connections and a TLS flood; about 2 minutes (3 with --unlimited).
bench-limits: setup $(BENCH_STAMP)
	$(VPY) bench/limits.py $(BENCH_ARGS)

clean:
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache
