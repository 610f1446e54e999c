# Two commands for a newcomer: `make run` and `make test`. Each creates .venv and installs what it
# needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(sort $(wildcard protos/stateward/v1/*.proto))

.PHONY: run test lint proto bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The install is redone when pyproject.toml changes. Editable: the two source roots (client/,
# service/) are not one folder setuptools can put on sys.path, so its editable install maps each
# package to its folder with an import finder, and says (pip >= 25 shows it) that a folder named
# like a package in the working directory would win. This checkout has none (the packages live
# under client/ and service/): that one notice is silenced, by its message, and nothing else.
INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet

$(VENV)/.installed-run: pyproject.toml | $(PY)
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(INSTALL) -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) examples/quickstart.py
	@echo ""
	@echo "Watch these runs in your browser: start $(VENV)/bin/stateward ui"
	@echo "and open http://127.0.0.1:8471/#/?flow=quickstart (Ctrl-C stops it)."

# Two pytest-xdist workers, each test file whole on one of them (see tests/conftest.py): on 2
# cores the suite took 10.5 of its 12 minutes serially. `pytest tests/...` alone runs serially.
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder

# Regenerates client/stateward/v1 from protos/: the only way generated code is made. The
# descriptor set keeps the protos' comments, for server reflection (`grpcurl describe`). A test runs
# this recipe with PROTO_OUT set to a temporary folder and compares the result with the commit.
PROTO_OUT ?= client
proto: $(VENV)/.installed-dev
	mkdir -p $(PROTO_OUT)/stateward/v1
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=quiet:$(PROTO_OUT) --mypy_grpc_out=quiet:$(PROTO_OUT) \
	  --include_imports --include_source_info \
	  --descriptor_set_out=$(PROTO_OUT)/stateward/v1/descriptors.binpb $(PROTOS)
	: > $(PROTO_OUT)/stateward/v1/__init__.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd protos && ../$(VENV)/bin/buf lint

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
