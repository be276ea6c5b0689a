# Static checks of the runtime (configured in pyproject.toml): ruff on runtime/ and plugins/, mypy --strict on
# runtime/moltbot. Part of `make test`.
#   make lint

TEST_TARGETS += lint

.PHONY: lint

## lint               - ruff (runtime/, plugins/) and mypy --strict (runtime/moltbot)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check runtime plugins
	$(VENV)/bin/mypy
