# afd-cli developer entry points. `make setup` is idempotent: it (re)installs only when
# pyproject.toml changed, and fetches only datasets that are not cached yet.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATASETS ?= mnist digits

.PHONY: setup data test test-fast lint format docs run benchmark benchmark-scale benchmark-torchrun gpu-check clean

setup: $(STAMP) data
	@echo "afd is installed in $(BIN)/; to type plain 'afd' in this shell:  . $(BIN)/activate"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

data: $(STAMP)
	for d in $(DATASETS); do $(BIN)/afd data fetch $$d || exit 1; done

# The whole suite, then the documentation site built strictly (what CI runs). Tests run on
# every core (pytest-xdist, -n auto; the slowest test is the floor); PYTEST_ARGS= runs them
# in one process. Markers (pyproject.toml, applied in tests/conftest.py) pick subsets: slow,
# cuda, distributed, data, network.
PYTEST_ARGS ?= -n auto --dist worksteal
test: $(STAMP)
	$(BIN)/afd data fetch digits >/dev/null
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -d .site-check

# Daily work: everything but the slow, torchrun and GPU tests (no test over 10 s); `make test`
# before pushing.
# One file or test: $(BIN)/python -m pytest tests/test_x.py -k name
test-fast: $(STAMP)
	$(BIN)/afd data fetch digits >/dev/null
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow and not distributed and not cuda"

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on any warning. The
# configuration reference page is generated from the schema first (a test keeps it current).
docs: $(STAMP)
	$(BIN)/afd config reference > docs/reference/configuration.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# The main job: FedAvg against Single-Model AFD on MNIST (non-IID, 10 rounds each), then the
# report that compares them (bytes and simulated time to the target, reduction x); a few
# minutes on 2 cores. Run again, it continues the finished runs and reports at once.
RUN_DIR ?= outputs/main
run: setup
	$(BIN)/afd run -m strategy=fedavg,single progress=plain hydra.sweep.dir=$(RUN_DIR)
	$(BIN)/afd report $(RUN_DIR)

benchmark: $(STAMP)
	$(BIN)/afd data fetch mnist >/dev/null
	$(BIN)/python -m afd_cli.bench

# (g) alone: Synthetic(1,1) at 1,000 / 10,000 / 100,000 clients, 100 per round, DGC: seconds
# per round and peak RSS, each size in its own process (~2 min on 2 cores; nothing to fetch).
# More sizes: make benchmark-scale CLIENTS=1000,100000,1000000
CLIENTS ?= 1000,10000,100000
benchmark-scale: $(STAMP)
	$(BIN)/python -m afd_cli.bench --only g --clients $(CLIENTS)

# (h) alone: what torchrun costs, 2 processes against 1 (CPU seconds, seconds per round, the
# checkpoints' seconds), single + dgc on MNIST; ~5 min with the mlp on 2 cores, ~15 with
# MODEL=cnn_mnist.
MODEL ?= mlp
benchmark-torchrun: $(STAMP)
	$(BIN)/afd data fetch mnist >/dev/null
	$(BIN)/python -m afd_cli.bench --only h --model $(MODEL) --repeats 2

# On a machine with a CUDA GPU: every CUDA test, in every file (marker `cuda`; they skip
# elsewhere), and the GPU benchmark (d).
gpu-check: $(STAMP)
	$(BIN)/afd data fetch digits >/dev/null
	$(BIN)/afd data fetch mnist >/dev/null
	$(BIN)/python -m pytest -q -rs -m cuda
	$(BIN)/python -m afd_cli.bench --only d --repeats 2

clean:
	rm -rf outputs/runs outputs/sweeps outputs/benchmarks outputs/main .pytest_cache site .site-check
