# Benchmarks (bench/): the runtime against llama.cpp's llama-server, like against like (int8 vs q8_0, int4 vs q4_0,
# fp32 vs f16), both servers up at once and measured in interleaved rounds, through the HTTP API.
#   make bench    prepare the models (cached under build/bench/), measure, print the tables, write docs/benchmarks.md
# Not part of TEST_TARGETS: a benchmark is not a test (tests/bench/ checks the helpers in the normal pytest run).
# Environment: BENCH_ROUNDS (default 5) rounds per short point, BENCH_LONG_ROUNDS (default 5) for the long-context
# point, BENCH_PAIRS (default int8,int4,fp32), BENCH_LONG (precisions with the long-context point, default int8).
# Sized to finish in under 25 minutes on 2 cores once the models and llama.cpp are built (a first run also builds
# llama-server and llama-quantize: 5 minutes on a quiet machine, 30 on a busy one). Under other load a run takes
# longer (one at load 4-6 took 27 minutes) and its figures are less worth: see docs/benchmarks.md.
# The GPU rows alone, on a machine with a GPU and no network: scripts/gpu-check.sh (wheels carried from here).

BENCH_TIMEOUT ?= 3600

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

# builder-venv (mk/builder.mk): the model builder, with which the runtime makes its int4 (and int8, fp32) graphs.
bench-deps: $(VENV)/.installed-bench bench-system-deps builder-venv

bench: bench-deps
	timeout --signal=INT $(BENCH_TIMEOUT) $(PY) -m bench.run
