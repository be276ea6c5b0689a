# runtime/moltbot/ui/: the chat page. Its browser tests (tests/ui/) run in the root pytest run, in Debian's
# chromium (installed by `make system-deps`) driven by Playwright (the test extra; no downloaded browser).
.PHONY: test-ui ui-screenshots

## test-ui               - only the chat page's tests (headless Chromium against a live runtime)
test-ui: $(VENV)/.installed-test system-deps
	$(VENV)/bin/pytest tests/ui $(PYTEST_ARGS)

## ui-screenshots        - the chat page's tests, saving their screenshots into docs/images/
ui-screenshots: $(VENV)/.installed-test system-deps
	MOLTBOT_SCREENSHOTS=docs $(VENV)/bin/pytest tests/ui $(PYTEST_ARGS)
