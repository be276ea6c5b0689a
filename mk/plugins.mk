# Plugins (plugins/, runtime/moltbot/plugins/): what the plugin tests need beyond the runtime.
#   make plugins-deps           pypdf and psycopg into .venv, PostgreSQL server binaries from Debian
#   make test-plugins           only the plugin tests (tests/plugins)

TEST_DEPS += plugins-deps

.PHONY: plugins-deps plugins-system-deps test-plugins

## plugins-deps       - install the built-in plugins' packages (requirements/plugins.txt) and PostgreSQL
## test-plugins       - run the plugin tests only

$(VENV)/.installed-plugins: requirements/plugins.txt $(VENV)/.installed-run
	$(PIP) install -q -r requirements/plugins.txt
	touch $@

# sql_assistant's tests start a throwaway PostgreSQL cluster with Debian's server binaries.
plugins-system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql (for the sql_assistant tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	fi

plugins-deps: $(VENV)/.installed-plugins plugins-system-deps

test-plugins: $(VENV)/.installed-test plugins-deps
	$(VENV)/bin/pytest tests/plugins $(PYTEST_ARGS)
