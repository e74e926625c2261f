# Two commands do the whole set-up on a fresh Debian machine:
#   make repro   install what is missing, then run the DVC pipeline on the default data
#   make test    install what is missing, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.cml-installed
export PATH := $(BIN):$(PATH)

.PHONY: setup system data repro soundtracks pool pretrain test test-fast lab bench clean

setup: system $(INSTALLED)  ## install system packages and the Python environment

system:  ## Java + ELKI, FluidSynth, python3-venv (apt-get, only when missing)
	@bash .ci/system-packages.sh

$(INSTALLED): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name cml --display-name "Python (cml)" >/dev/null
	@touch $@

data:  ## the user-data folder tracked by data.dvc (audio under data/audio, Spotify CSVs under data/spotify)
	@mkdir -p data/audio data/spotify

repro: setup data  ## run the whole pipeline (dvc repro)
	dvc repro

# The benchmark on real recordings: six game soundtracks Debian ships (133 recordings, 5.6 h), labelled by game.
# DVC applies the experiment to the workspace: params.yaml and outputs/ then hold it; to go back to the committed
# study: git checkout params.yaml && dvc checkout. A second run needs another name (-n) or dvc exp run -f.
soundtracks: setup data  ## benchmark on real recordings (Debian's game soundtracks, 3 seeds): about 75 min on 2 cores
	cml soundtracks fetch
	dvc exp run -n soundtracks -S '++corpus.source=soundtracks' -S 'study.audio=corpus' -S 'study.seeds=[0,1,2]'
	@echo "results: dvc exp show --only-changed (params and metrics of every experiment), outputs/evaluate/"
	@echo "params.yaml and outputs/ now hold experiment soundtracks; back: git checkout params.yaml && dvc checkout"

# The pretraining pool: the free music of eleven other Debian packages (269 recordings >= 30 s, 13.2 h), never a
# benchmark package's. The .deb files go to $CML_DEB_CACHE (~/.cache/cml/debs), the pool outside the repository;
# an interrupted build resumes where it stopped.
POOL_DIR ?= $(HOME)/.cache/cml/pool
pool: setup  ## fetch and transcode the pretraining pool into POOL_DIR: about 10 min on 2 cores, 3.9 GB of .deb files
	cml pool fetch
	cml pool build --out $(POOL_DIR)

# The shipped encoder (cml/weights/pretrained): the pool, then `cml pretrain` with params.yaml's pretrain section,
# on one thread as the shipped one was made (the same weights). It resumes after an interruption (run it again);
# --ship replaces the shipped checkpoint and its card.json.
PRETRAIN_DIR ?= $(HOME)/.cache/cml/pretrain
pretrain: pool  ## pretrain the shipped encoder on the pool and ship it: about 13 min on one core
	OMP_NUM_THREADS=1 cml pretrain --pool $(POOL_DIR) --out $(PRETRAIN_DIR) --ship

test: setup  ## run the test suite, including an end-to-end pipeline run
	$(VENV)/bin/python -m pytest -q

test-fast: setup  ## the developer's loop: every test but the end-to-end pipeline runs (under 3 min)
	$(VENV)/bin/python -m pytest -q -m "not e2e"

lab: setup  ## open JupyterLab on the notebooks
	jupyter lab notebooks/

bench: setup  ## run the benchmarks (numbers go into benchmarks/<study>/README.md)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(VENV)/bin/python $$b; done

clean:  ## remove the pipeline outputs DVC caches (not the committed metrics, not the venv)
	git clean -fdXq outputs
