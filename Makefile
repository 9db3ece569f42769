# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap what
# they need (see .ci/bootstrap) and can be run again at any time.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo demo-scale test bench lock clean prompts

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

include image/Makefile.inc
