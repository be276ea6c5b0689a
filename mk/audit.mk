# Dependency audit (issue #16): pip-audit over the exact versions installed (pip freeze of the project venv, and of
# the builder's and Ansible's venvs where they exist), with --no-deps, in its own venv (build/audit-venv) so the
# project venv stays as the tests need it. Not part of `make test`: it needs a vulnerability database (OSV or
# PyPI's JSON API) on the network, and says clearly, exiting 2, when none can be reached.
AUDIT_VENV ?= build/audit-venv

.PHONY: audit

$(AUDIT_VENV)/.installed: requirements/audit.txt
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/pip install -q -r requirements/audit.txt
	touch $@

## audit              - pip-audit over the installed, pinned packages (needs OSV or PyPI's JSON API; not in make test)
audit: $(AUDIT_VENV)/.installed $(VENV)/.installed-run
	AUDIT_VENV="$(abspath $(AUDIT_VENV))" PROJECT_VENV="$(abspath $(VENV))" \
	BUILDER_VENV="$(abspath $(BUILDER_VENV))" ANSIBLE_VENV="$(abspath $(ANSIBLE_VENV))" bash scripts/audit.sh
