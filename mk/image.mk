# Container image (Dockerfile, scripts/image-build.sh):
#   make image                   the cpu variant as moltbot:latest and moltbot:<version>-<revision>
#   make image VARIANT=gpu       the gpu variant as moltbot:gpu and moltbot:<version>-<revision>-gpu
#   make image-archive           docker save of moltbot:latest (with its version tag) to
#                                build/images/moltbot-latest.tar
# BASE_IMAGE (default debian:bookworm-slim; debian:trixie-slim works too): where a debian:<suite>-slim can't be
# pulled (no registry), an equivalent base is built here with debootstrap (scripts/build-base-image.sh, cached
# as local/debian:<suite>-slim).
# The default models baked into the image are made on this host with the project's venv and the model builder's
# (they need torch): smollm2-135m-instruct int8 for the CPU variant, fp16 for CUDA in the gpu variant's folder.

VARIANT ?= cpu
BASE_IMAGE ?= debian:bookworm-slim
IMAGE_DEFAULT_MODELS := build/default-models$(if $(filter gpu,$(VARIANT)),-gpu)
IMAGE_DEFAULTS_DEVICE := $(if $(filter gpu,$(VARIANT)),cuda,cpu)
IMAGE_ARCHIVE := build/images/moltbot-latest.tar
# The export code that makes the default models: when it changes, they are made again.
IMAGE_DEFAULTS_SOURCES := $(wildcard runtime/moltbot/export/*.py)

# The image tests (tests/image) run the image built here.
TEST_DEPS += image

.PHONY: image image-archive image-default-models

## image              - build the container image (VARIANT=cpu|gpu, BASE_IMAGE=...)
## image-archive      - save moltbot:latest and its version tag to build/images/moltbot-latest.tar

$(IMAGE_DEFAULT_MODELS)/.made: $(VENV)/.installed-run $(BUILDER_VENV)/.installed $(IMAGE_DEFAULTS_SOURCES)
	$(VENV)/bin/moltbot models defaults --output $(IMAGE_DEFAULT_MODELS) --device $(IMAGE_DEFAULTS_DEVICE) \
	  --default-chat-precision auto --builder-python $(BUILDER_VENV)/bin/python $(if $(wildcard $@),--force)
	touch $@

image-default-models: $(IMAGE_DEFAULT_MODELS)/.made

image: $(IMAGE_DEFAULT_MODELS)/.made system-deps
	VARIANT="$(VARIANT)" BASE_IMAGE="$(BASE_IMAGE)" DEFAULT_MODELS_DIR="$(IMAGE_DEFAULT_MODELS)" \
	  bash scripts/image-build.sh

# The archive is written again only when moltbot:latest changed (its image ID is kept next to it). It carries
# every moltbot tag of that image, the version tag among them, so a host that loads it has the version too.
image-archive:
	$(MAKE) --no-print-directory image VARIANT=cpu
	mkdir -p $(dir $(IMAGE_ARCHIVE))
	@id=$$(docker image inspect -f '{{.Id}}' moltbot:latest); \
	if [ -f $(IMAGE_ARCHIVE) ] && [ "$$(cat $(IMAGE_ARCHIVE).id 2>/dev/null)" = "$$id" ]; then \
	  echo "image-archive: $(IMAGE_ARCHIVE) is up to date ($$id)"; \
	else \
	  docker save $$(docker image inspect -f '{{join .RepoTags " "}}' moltbot:latest | tr ' ' '\n' | grep '^moltbot:') \
	    -o $(IMAGE_ARCHIVE).part && mv $(IMAGE_ARCHIVE).part $(IMAGE_ARCHIVE) && \
	  echo "$$id" > $(IMAGE_ARCHIVE).id && \
	  echo "image-archive: wrote $(IMAGE_ARCHIVE) ($$(du -m $(IMAGE_ARCHIVE) | cut -f1) MB)"; \
	fi
