# Ansible provisioning (ansible/): lint and Molecule scenarios on systemd test hosts.
#   make molecule                      all scenarios (role scenarios, then site)
#   make molecule SCENARIO=firewall    one scenario
#   make ansible-lint                  ansible-lint, production profile
# MOLECULE_IMAGE picks the test host image. The default, Ubuntu 22.04, is built here from Ubuntu's archive
# (scripts/build-test-host-image.sh), since CI machines can pull no image; moltbot-test/debian-systemd:bookworm
# is built from Debian's archive where Ubuntu's is not reachable; or set it to a public systemd
# image (e.g. geerlingguy/docker-ubuntu2204-ansible) to test against Ubuntu.

ANSIBLE_VENV ?= build/ansible-venv
MOLECULE_IMAGE ?= moltbot-test/ubuntu-systemd:jammy
# The two long scenarios first, so the short ones fill the other job slot.
MOLECULE_SCENARIOS := site nvidia_container_toolkit moltbot docker filebeat firewall node_exporter
SCENARIO ?=
MOLTBOT_IMAGE_ARCHIVE := build/images/moltbot-latest.tar

TEST_TARGETS += molecule ansible-lint

.PHONY: ansible-venv ansible-lint molecule molecule-test-host molecule-clean

## ansible-lint       - lint roles and playbooks (production profile)
## molecule           - run the Molecule scenarios (SCENARIO=<name> for one)

$(ANSIBLE_VENV)/.installed: requirements/ansible.txt
	test -x $(ANSIBLE_VENV)/bin/python || $(PYTHON) -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/pip install -q --upgrade pip
	$(ANSIBLE_VENV)/bin/pip install -q -r requirements/ansible.txt
	touch $@

ansible-venv: $(ANSIBLE_VENV)/.installed

ansible-lint: $(ANSIBLE_VENV)/.installed
	cd ansible && PATH="$(CURDIR)/$(ANSIBLE_VENV)/bin:$$PATH" ansible-lint

molecule-test-host: system-deps
	case "$(MOLECULE_IMAGE)" in moltbot-test/*) bash scripts/build-test-host-image.sh "$(MOLECULE_IMAGE)";; esac

molecule: $(ANSIBLE_VENV)/.installed molecule-test-host image-archive
	MOLECULE_IMAGE="$(MOLECULE_IMAGE)" ANSIBLE_VENV="$(CURDIR)/$(ANSIBLE_VENV)" \
	  bash scripts/ansible-molecule.sh $(or $(SCENARIO),$(MOLECULE_SCENARIOS))

molecule-clean:
	bash scripts/ansible-molecule.sh --clean
