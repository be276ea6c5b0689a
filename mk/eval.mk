# Plugin evaluation (issue 23; bench/eval/): each built-in plugin's fixed question set on the embedded default chat
# model (smollm2-135m-instruct int8), with and without its constraint (sql_assistant's SELECT grammar,
# knowledge_base's citation grammar):
#   make eval    print the scores and write build/eval/eval.md and eval.json (a few minutes on 2 cores)
# Not part of TEST_TARGETS: a score is a figure, not a test (tests/bench/test_eval.py checks that the harness runs
# and counts right). EVAL_TIMEOUT (seconds, default 3600) bounds the run.

EVAL_TIMEOUT ?= 3600

.PHONY: eval

## eval               - score the built-in plugins on the embedded default chat model, constrained and not; build/eval/

# The prerequisite is the target, not the folder: mk/image.mk, which names the folder, is read after this file.
eval: image-default-models
	timeout --signal=INT $(EVAL_TIMEOUT) $(PY) -m bench.eval --defaults $(IMAGE_DEFAULT_MODELS) --out build/eval
