# runtime/moltbot/ui/: the chat page. Its browser tests (tests/ui/) run in the root pytest run, in Debian's
# chromium (installed by `make system-deps`) driven by Playwright (the test extra; no downloaded browser).
.PHONY: test-ui ui-screenshots grafana-screenshots

## test-ui               - only the chat page's tests (headless Chromium against a live runtime)
test-ui: $(VENV)/.installed-test system-deps
	$(VENV)/bin/pytest tests/ui $(PYTEST_ARGS)

## ui-screenshots        - the chat page's tests, saving their screenshots into docs/images/
ui-screenshots: $(VENV)/.installed-test system-deps
	MOLTBOT_SCREENSHOTS=docs $(VENV)/bin/pytest tests/ui $(PYTEST_ARGS)

# Grafana: MOLTBOT_TEST_GRAFANA_HOME (an unpacked release) or Grafana's Debian package; skipped without one.
## grafana-screenshots   - the dashboards in a real Grafana, their PNGs saved into docs/images/
grafana-screenshots: $(VENV)/.installed-test system-deps monitoring-deps pulumi-deps
	MOLTBOT_SCREENSHOTS=docs $(VENV)/bin/pytest tests/monitoring/test_grafana_render.py -rs $(PYTEST_ARGS)
