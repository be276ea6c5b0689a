# Benchmarks (bench/): the runtime against transformers eager and llama.cpp's llama-server, through the HTTP API.
#   make bench    prepare the models (cached under build/bench/), measure, print the table, write docs/benchmarks.md
# Not part of TEST_TARGETS: a benchmark is not a test (tests/bench/ checks the helpers in the normal pytest run).
# BENCH_REPEATS (default 3) runs each point that many times and records the median.

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

bench-deps: $(VENV)/.installed-bench bench-system-deps

bench: bench-deps
	timeout --signal=INT $(BENCH_TIMEOUT) $(PY) -m bench.run
