# Plugins (plugins/, runtime/moltbot/plugins/): the built-ins' extra packages for the Python suite.
#   make plugins-deps     install requirements/plugins.txt into .venv
#   make test-plugins     only the plugin tests (tests/plugins)

TEST_DEPS += plugins-deps

.PHONY: plugins-deps test-plugins

## plugins-deps       - install the built-in plugins' packages (pypdf) into .venv
## test-plugins       - run the plugin tests only

$(VENV)/.installed-plugins: requirements/plugins.txt $(VENV)/.installed-run
	$(PIP) install -q -r requirements/plugins.txt
	touch $@

plugins-deps: $(VENV)/.installed-plugins

test-plugins: $(VENV)/.installed-test plugins-deps
	$(VENV)/bin/pytest tests/plugins $(PYTEST_ARGS)
