# Each target builds its own virtual environment. torch's CPU build is installed first, when
# no torch is present, so that the dependency resolver never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

RUN ?= runs/ppo-default

.PHONY: demo compare test bench bench-ray clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml setup.py lossgym/_closedform.c | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,agents,ray]"
	touch $@

# The main job: train the default PPO agent, evaluate it against every baseline on held-out
# tasks, and write $(RUN)/report.md with its plots. The random and CMA-ES searches get the
# agent's budget; PBT gets PBT_BUDGET inner runs (each trial trains alone, so the agent's
# budget would cost hours on 2 cores; PBT_BUDGET= gives it the agent's). The report states both.
PBT_BUDGET ?= 120
demo: $(VENV)/.installed
	$(BIN)/python -m agents.train --algo ppo --run-dir $(RUN)
	$(BIN)/python -m agents.evaluate --run-dir $(RUN) $(if $(PBT_BUDGET),--pbt-budget $(PBT_BUDGET))

compare: $(VENV)/.installed
	$(BIN)/lossgym compare

test: $(VENV)/.installed
	$(BIN)/ruff check lossgym agents tests scripts
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python scripts/bench_engine.py
	$(BIN)/python scripts/bench_env.py
	OMP_NUM_THREADS=1 $(BIN)/python scripts/bench_adaptive_loss.py
	$(BIN)/python scripts/bench_loss_kernel.py

# The evaluation sweep locally and on a local Ray with 2 workers (scripts/bench_ray.py).
bench-ray: $(VENV)/.installed
	$(BIN)/python scripts/bench_ray.py --workers 2

clean:
	rm -rf $(VENV)
