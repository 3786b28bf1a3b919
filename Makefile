# QUIC Tunnel Lab. `make demo` runs the default failover experiment; `make test` runs every check.
# Both install what is missing first: Debian packages (apt, needs root) and a venv from pyproject.toml.

SHELL := /bin/bash
SYSTEM_PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
# What make compiles with gcc: the link shaper (testbed/wire/), the TCP segmenter (tunnel/wire/)
# and the fast path's packet protection (tunnel/protocol/quic_crypto.c).
NATIVE := build/qtwire build/libqtoffload.so build/_qtcrypto.so

.PHONY: all deps venv lint typecheck check test test-unit demo bench soak fuzz fidelity notebooks lab install-dissector install-commands uninstall-commands clean distclean

all: venv $(NATIVE)

$(STAMPS)/system: scripts/install-system-deps.sh
	@mkdir -p $(STAMPS)
	./scripts/install-system-deps.sh
	@touch $@
	@# `sudo make deps` then `make test-unit` as the user: the stamps must stay the user's
	@if [ -n "$${SUDO_UID:-}" ]; then chown -R "$$SUDO_UID:$$SUDO_GID" $(STAMPS); fi

deps: $(STAMPS)/system

$(STAMPS)/venv: pyproject.toml $(STAMPS)/system
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,distributed]'
	# Mininet comes from Debian (it needs the matching mnexec); expose only that package to the venv.
	ln -sfn /usr/lib/python3/dist-packages/mininet "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mininet"
	@touch $@

venv: $(STAMPS)/venv

# The testbed's link shaper (this kernel has no netem): a small C program, see testbed/wire/.
build/qtwire: testbed/wire/qtwire.c
	@mkdir -p build
	gcc -O2 -Wall -Wextra -o $@ $<

# The TUN offloads both qtun programs load (issue 14): the TCP segmenter of reads with
# segmentation offload (tunnel/wire/tcp_tso.c) and the merge of TCP writes (tcp_gro.c); without
# the library a TUN is opened without offloads.
build/libqtoffload.so: tunnel/wire/tcp_tso.c tunnel/wire/tcp_gro.c tunnel/wire/checksum.h
	@mkdir -p build
	gcc -O2 -Wall -Wextra -shared -fPIC -o $@ $(filter %.c,$^)

# The datagram fast path's packet protection (issue 14 item 5): a CPython extension for the
# venv's Python, linked with OpenSSL's libcrypto (python3-dev, libssl-dev); without it quic_ext
# protects those packets in Python.
build/_qtcrypto.so: tunnel/protocol/quic_crypto.c $(STAMPS)/venv
	@mkdir -p build
	gcc -O2 -Wall -Wextra -shared -fPIC -I"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" -o $@ $< -lcrypto

# Configured vs measured delay, loss and rate of the shaper: results/fidelity/<timestamp>/.
fidelity: venv $(NATIVE)
	$(VENV)/bin/qtlab fidelity

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# The inner loop, under a minute: lint, types and the fast unit tests (no root, no notebooks,
# nothing marked `slow`; Hypothesis' "dev" profile: few examples each).
check: lint typecheck build/libqtoffload.so build/_qtcrypto.so
	$(PY) -m pytest -q -m "not root and not slow and not notebook" tests/unit

# Every test: unit (no root), integration (root: namespaces, TUN, Mininet) and notebooks, with
# Hypothesis' "ci" profile and the slowest tests listed. scripts/run-tests runs three lanes side
# by side (the Mininet tests one after the other, the other root tests one after the other, the
# unit and notebook tests at nice 19), then one leak check for the run: it fails if the tests
# leave namespaces, interfaces, nft tables or helper processes behind.
# pytest exits 5 when it collected nothing; the script and make treat that as the failure it is.
test: lint typecheck $(NATIVE)
	PY=$(PY) ./scripts/run-tests

# What a user without root can run: the sans-I/O core and everything else that needs no
# privileges or Mininet (tests/unit; no notebooks).
test-unit: venv build/libqtoffload.so build/_qtcrypto.so
	$(PY) -m pytest --hypothesis-profile=ci -m "not root" tests/unit

# The default failover experiment (about 3 minutes): results/demo/failover/<timestamp>/, its
# figure failover-demo.png (and .svg) inside.
demo: venv $(NATIVE)
	$(VENV)/bin/qtlab demo

# Goodput of plain, tunnel, session and stream mode per link profile: results/bench/<ts>/bench.csv.
# Its options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--rate 1.2 --reverse".
BENCH_ARGS ?=
bench: venv $(NATIVE)
	$(PY) -m experiments.bench $(BENCH_ARGS)

# Soak and fault (11-12 minutes): 20 clients in every mode with checked transfers for 10
# minutes, link flaps, WiFi blackholes, a SIGKILLed concentrator and a hostile client at once;
# memory, fds, exceptions, checksums and latency in results/soak/<timestamp>/.
soak: venv $(NATIVE)
	$(VENV)/bin/qtlab run soak --config experiments/configs/soak.toml

# Structure-aware fuzzing of the real concentrator through real connections (300,000 inputs,
# every Protocol Type): crashes, exceptions, liveness, RSS and fds in results/fuzz/<timestamp>/.
fuzz: venv $(NATIVE)
	$(VENV)/bin/qtlab run fuzz --config experiments/configs/fuzz.toml

# Run every notebook on the runs results/figures/runs.toml names, headless: figures in
# results/figures/.
# (The venv's kernel runs the first `python` on PATH, hence the PATH.)
notebooks: venv
	cd notebooks && for nb in *.ipynb; do PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ../$(VENV)/bin/jupyter execute "$$nb" || exit 1; done

# JupyterLab on the notebooks (installs the `lab` extra into the venv once).
lab: venv
	$(VENV)/bin/jupyter-lab --version >/dev/null 2>&1 || $(PY) -m pip install -q -e '.[dev,lab]'
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/jupyter-lab notebooks/ --no-browser $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# The Wireshark dissector of the three drafts (tools/wireshark/quic_tunnel.lua) for this user's
# Wireshark and tshark (run it without sudo): open a capture with the TLS keylog the programs
# wrote (observability.keylog_file) and filter on `qtun`. `python -m testbed.decode DIR` does not
# need it (it loads the repository's copy).
WIRESHARK_PLUGINS ?= $(HOME)/.local/lib/wireshark/plugins
install-dissector:
	install -D -m 644 tools/wireshark/quic_tunnel.lua $(WIRESHARK_PLUGINS)/quic_tunnel.lua
	@echo "installed $(WIRESHARK_PLUGINS)/quic_tunnel.lua: restart Wireshark; filter on qtun"

# `sudo qtlab ...` from anywhere: sudo's secure_path leaves .venv/bin out, so this writes small
# qtlab and qtun wrappers that run this checkout's into BINDIR (on sudo's path). As root.
BINDIR ?= /usr/local/bin
install-commands: venv
	./scripts/install-commands $(BINDIR)

uninstall-commands:
	./scripts/install-commands --remove $(BINDIR)

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) $(STAMPS)
