# Two entry points for a fresh machine: `make demo` (install + run the noisy-label digits study) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/gnp-study run greedy search_spaces/digits_label_noise.yaml

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_optim.py

# Study throughput: the 26-trial digits cut through `gnp-study run greedy` against the same trials run
# in-process, 3 repetitions (benchmarks/README.md); BENCH_STUDY_ARGS="--study search_spaces/digits.yaml --reps 1"
# for the default study.
bench-study: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_study.py $(BENCH_STUDY_ARGS)

# Vectorised seeds (torch.func vmap) against the same seeds trained one after the other, in one process
# (benchmarks/README.md, "Vectorised seeds"); a few minutes on 2 cores.
bench-seeds: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_seeds_vmap.py

.PHONY: install demo test bench bench-study bench-seeds
