# monitoring/: Prometheus rules and config, Alertmanager, Grafana dashboards, Filebeat. Its tests
# (tests/monitoring/) run in the root pytest run; Debian's prometheus, promtool, node exporter and
# amtool come from `make system-deps`.
PROMETHEUS_DIR := monitoring/prometheus

.PHONY: monitoring-deps monitoring-check monitoring-dashboards test-monitoring
TEST_DEPS += monitoring-deps

$(VENV)/.installed-monitoring: requirements/monitoring.txt $(VENV)/.installed-run
	$(PIP) install -q -r requirements/monitoring.txt
	touch $@

monitoring-deps: $(VENV)/.installed-monitoring

## monitoring-check      - promtool/amtool checks, alert unit tests, dashboards up to date
monitoring-check: monitoring-deps
	promtool check config --syntax-only $(PROMETHEUS_DIR)/prometheus.yml
	promtool check rules $(PROMETHEUS_DIR)/rules/*.yml
	promtool test rules $(PROMETHEUS_DIR)/tests/*.yml
	amtool check-config monitoring/alertmanager/alertmanager.yml
	$(PY) monitoring/grafana/generate.py --check

## monitoring-dashboards - regenerate monitoring/grafana/dashboards/*.json from generate.py
monitoring-dashboards: monitoring-deps
	$(PY) monitoring/grafana/generate.py

## test-monitoring       - only the monitoring tests (real Prometheus, node exporter, Alertmanager, runtime)
test-monitoring: $(VENV)/.installed-test system-deps monitoring-deps
	$(VENV)/bin/pytest tests/monitoring $(PYTEST_ARGS)
