# Benchmarks (bench/): the runtime against llama.cpp's llama-server on real weights (SmolLM2-135M-Instruct from its
# Q4_1 GGUF, Gemma 3 270M from its Q4_K_M GGUF): the runtime's int8/int4 graphs (its own GGUF import) against q8_0 /
# q4_0 made by llama.cpp from the same dequantised weights and against the original files; both servers up at once
# and measured in interleaved rounds, through the HTTP API.
#   make bench    prepare the models (cached under build/bench/), measure, print the tables, write docs/benchmarks.md
# Not part of TEST_TARGETS: a benchmark is not a test (tests/bench/ checks the helpers in the normal pytest run).
# Environment: BENCH_ROUNDS (default 5) rounds per short point, BENCH_LONG_ROUNDS (default 3) for the long-context
# point, BENCH_PAIRS (default all: six pairs; or models, precisions, model:precision:gguf such as smollm2:fp32:f16),
# BENCH_LONG (pairs with the long-context point: default all; precisions or model:precision:gguf; empty for none).
# The full run takes about 45 minutes on a quiet 2-core machine once the models and llama.cpp are built (a first
# run also imports the graphs, a few minutes, and builds llama.cpp's tools: 5 minutes quiet, 30 busy). Under other
# load it takes longer and its figures are less worth: see docs/benchmarks.md.
# The GPU rows alone, on a machine with a GPU and no network: scripts/gpu-check.sh (wheels carried from here).

BENCH_TIMEOUT ?= 5400

.PHONY: bench bench-deps bench-system-deps

## bench              - benchmark the runtime (CPU; GPU too when nvidia-smi finds one); results in docs/benchmarks.md

$(VENV)/.installed-bench: requirements/bench.txt $(VENV)/.installed-test
	$(PIP) install -q -r requirements/bench.txt
	touch $@

# llama-server is compiled from the llama.cpp sources in the llama-cpp-python sdist (bench/build_llama_server.sh).
bench-system-deps:
	@if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null || ! command -v g++ >/dev/null; then \
	  echo "installing cmake, ninja-build and g++ (to build llama-server)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    cmake ninja-build g++ make; \
	fi

# builder-venv (mk/builder.mk): the model builder, with which the runtime makes its graphs; .installed-fidelity
# (mk/fidelity.mk): the Gemma GGUF's packages.
bench-deps: $(VENV)/.installed-bench $(VENV)/.installed-fidelity bench-system-deps builder-venv

bench: bench-deps
	timeout --signal=INT $(BENCH_TIMEOUT) $(PY) -m bench.run
