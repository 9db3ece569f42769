# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap what
# they need (see .ci/bootstrap) and can be run again at any time.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo demo-scale test bench lock clean prompts release

install:
	@./.ci/bootstrap

demo: install
	$(BIN)/linetap demo

# The central store past one machine: PostgreSQL, SeaweedFS (S3) and two `serve` hosts on loopback, the
# demo's calls, `verify --all`; everything it starts and makes is removed afterwards.
demo-scale: install
	$(BIN)/python -m linetap.sync.central.demo_scale

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,bench]"
	$(BIN)/python -m bench

# Refresh constraints.txt from what pyproject.toml allows today (commit the result).
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q -e ".[test,bench]"
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' | LC_ALL=C sort > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-data bench/results

# Remake the shipped consent prompt and test conversation offline (needs espeak-ng); commit the result.
prompts: install
	$(BIN)/python firmware/data/make_prompt.py en en-us "This call is being recorded for quality assurance." firmware/data/prompt-en.ogg
	$(BIN)/python firmware/data/make_speech.py firmware/data

# The box's release from this working tree: the linetap wheel and the aarch64 wheels it needs for CPython 3.11
# (fetched as image/build-rootfs fetches them, so it needs the package index), signed with RELEASE_KEY and kept in
# the central data dir (DATA_DIR, else $$LINETAP_CENTRAL_DATA_DIR) for `linetap-central fleet update push`.
# make release RELEASE_KEY=/offline/release.key [DATA_DIR=/var/lib/linetap-central] [BOARDS=a,b] [MIN_PREVIOUS=0.1]
RELEASE_PLATFORMS := $(foreach m,36 35 34 33 32 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17,--platform manylinux_2_$(m)_aarch64) \
	--platform manylinux2014_aarch64 --platform linux_aarch64
release: install
	@test -n "$(RELEASE_KEY)" || { echo "usage: make release RELEASE_KEY=PATH [DATA_DIR=DIR] [BOARDS=a,b] [MIN_PREVIOUS=V]" >&2; exit 2; }
	@set -e; work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; mkdir -p "$$work/src" "$$work/wheels"; \
	tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md constraints.txt firmware drivers sync \
		hardware | tar -xf - -C "$$work/src"; \
	$(BIN)/python -m pip wheel -q --no-deps -w "$$work/wheels" "$$work/src"; \
	$(BIN)/python -m pip download -q --only-binary=:all: $(RELEASE_PLATFORMS) --python-version 3.11 \
		--implementation cp -c constraints.txt -d "$$work/wheels" "$$work"/wheels/linetap-*.whl \
		-r image/requirements-target.txt; \
	$(BIN)/linetap-central $(if $(DATA_DIR),--data-dir $(DATA_DIR)) release build --release-key "$(RELEASE_KEY)" \
		--wheels "$$work/wheels" $(if $(BOARDS),--boards $(BOARDS)) $(if $(MIN_PREVIOUS),--min-previous $(MIN_PREVIOUS))

include image/Makefile.inc
