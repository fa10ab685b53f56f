# marketpulse: every target a person or a nightly job needs.
# The Makefile owns its virtualenv (.venv) and installs from pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MP     := $(BIN)/marketpulse
STAMP  := $(VENV)/.installed
EXTRAS ?= train,trends,ray,privacy,dev

# Job variables (override on the command line: make score DB=prod.duckdb TABLE=news ...).
# Each names one thing and reaches the CLI as one argument, exactly as given, spaces and
# quotes included: TABLE='ext."Market Posts"' BY='Brand Name' TEXT_COL='Tweet Body'.
# The *_ARGS variables are lists of extra flags instead, which the shell splits as written:
# SCORE_ARGS="--limit 1000 --where \"lang = 'en'\"". Write a $ in any value as $$ (make).
DB          ?= artifacts/demo/market.duckdb
TABLE       ?= posts
ID_COL      ?= id
TEXT_COL    ?= text
LABEL_COL   ?= label
TIME_COL    ?= posted_at
BY          ?= brand
GRAIN       ?= week
DEVICE      ?= auto
MODEL       ?= artifacts/model
BUNDLE      ?= artifacts/bundle
INPUT       ?=
TRAIN_ARGS  ?=
EXPORT_ARGS ?=
SCORE_ARGS  ?=
TRENDS_ARGS ?=
BENCH_ARGS  ?=
DEMO_ARGS   ?=
SHIFT_EVAL_ARGS ?=
ISA_CHECK_ARGS ?=

# $(call q,VALUE): VALUE as one shell word, in single quotes, each ' inside written '\''.
q = '$(subst ','\'',$(1))'

.PHONY: setup setup-gpu gpu-check isa-check test test-fast lint fmt demo bench shift-eval forecast-eval train-speed train export score trends nightly clean

setup: $(STAMP)

# torch==2.13.0 first: it is a CPU build on local disk; unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# onnxruntime and onnxruntime-gpu must never be installed together: the CUDA provider
# silently disappears. Remove the CPU build first, then install the GPU one.
setup-gpu: setup
	$(BIN)/python -m pip uninstall -y onnxruntime
	$(BIN)/python -m pip install -q 'onnxruntime-gpu[cuda,cudnn]>=1.21'
	$(BIN)/python -c "import onnxruntime as ort; print(ort.get_available_providers())"

# After setup-gpu, on the GPU machine: fp16 on CUDA against the bundle's fp32 graph on
# CPU (label agreement), then rows/s end to end for a few batch settings.
GPU_TEXTS ?= ../shared/data/twitter_financial_news/valid.csv
gpu-check: setup
	$(BIN)/python -m marketpulse.tools.gpucheck --bundle $(call q,$(BUNDLE)) --texts $(call q,$(GPU_TEXTS))

# int8 on an emulated AVX2-only CPU (qemu-x86_64 -cpu Haswell, Debian's qemu-user)
# against fp32 run natively: is the bundle right where the scoring CPU lacks VNNI?
ISA_TEXTS ?= ../shared/data/twitter_financial_news/valid.csv
isa-check: setup
	$(BIN)/python -m marketpulse.tools.isacheck --bundle $(call q,$(BUNDLE)) \
		--check-input $(call q,$(ISA_TEXTS)) $(ISA_CHECK_ARGS)

test: setup
	$(BIN)/python -m pytest -m "not gpu" -q

test-fast: setup
	$(BIN)/python -m pytest -m "not gpu and not slow" -q

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: setup
	$(BIN)/python -m marketpulse.tools.demo $(DEMO_ARGS)

bench: setup
	$(BIN)/python -m marketpulse.tools.bench $(BENCH_ARGS)

# False alarms per 1,000 bucket checks and detection by shock size, on real snippets
# dealt into simulated series (~1 minute on 2 cores); exits 1 if alpha is off its rate.
shift-eval: setup
	$(BIN)/python -m marketpulse.tools.shift_eval $(SHIFT_EVAL_ARGS)

# The trend forecaster's one-step skill and band coverage, out of sample, on real series
# (statsmodels' bundled data sets, and the demo's stream when --data finds it).
forecast-eval: setup
	$(BIN)/python -m marketpulse.tools.forecast_eval --data ../shared/data

# Training rows/s on this CPU: fp32 against bf16 autocast, side by side (~2 minutes)
train-speed: setup
	$(BIN)/python -m marketpulse.tools.train_speed $(TRAIN_SPEED_ARGS)

train: setup
	$(MP) train $(if $(INPUT),--input $(call q,$(INPUT)),--db $(call q,$(DB)) --table $(call q,$(TABLE))) \
		--text-col $(call q,$(TEXT_COL)) --label-col $(call q,$(LABEL_COL)) --out $(call q,$(MODEL)) $(TRAIN_ARGS)

export: setup
	$(MP) export --model $(call q,$(MODEL)) --out $(call q,$(BUNDLE)) $(EXPORT_ARGS)

score: setup
	$(MP) score --db $(call q,$(DB)) --table $(call q,$(TABLE)) \
		--id-col $(call q,$(ID_COL)) --text-col $(call q,$(TEXT_COL)) \
		--bundle $(call q,$(BUNDLE)) --device $(call q,$(DEVICE)) $(SCORE_ARGS)

trends: setup
	$(MP) trends --db $(call q,$(DB)) --source $(call q,$(TABLE)) \
		--id-col $(call q,$(ID_COL)) --time-col $(call q,$(TIME_COL)) \
		$(if $(BY),--by $(call q,$(BY))) --grain $(call q,$(GRAIN)) $(TRENDS_ARGS)

# Sequential even under `make -j`: trends must read tonight's scores.
nightly: setup
	$(MAKE) --no-print-directory score
	$(MAKE) --no-print-directory trends

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache *.egg-info
