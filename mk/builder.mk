# The model builder's environment (requirements/builder.txt): ONNX Runtime GenAI's builder with transformers 5,
# apart from the project venv whose Optimum exporter pins transformers 4.57. The runtime finds it through
# MOLTBOT_BUILDER_PYTHON (the tests point it here).
#   make builder-venv    build/builder-venv

BUILDER_VENV ?= build/builder-venv
TEST_DEPS += builder-venv

.PHONY: builder-venv

## builder-venv       - the model builder's venv (build/builder-venv) for int4/int8 builder graphs

$(BUILDER_VENV)/.installed: requirements/builder.txt
	test -x $(BUILDER_VENV)/bin/python || $(PYTHON) -m venv $(BUILDER_VENV)
	$(BUILDER_VENV)/bin/pip install -q --upgrade pip
	$(BUILDER_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(BUILDER_VENV)/bin/pip install -q -r requirements/builder.txt
	touch $@

builder-venv: $(BUILDER_VENV)/.installed
