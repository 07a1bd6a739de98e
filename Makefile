# labkit: the two commands a new machine needs are `make report` and `make test` (see README).
# Both install what they need by themselves (Debian packages as root, then a venv at .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := btrfs-progs xfsprogs e2fsprogs util-linux thin-provisioning-tools busybox-static fuse3 libfuse3-3 kmod
PYTEST_ARGS ?=

.PHONY: test setup apt venv clean-venv gc

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

setup: apt venv

# install only what is missing; `apt-get update` only when something is
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

gc: setup
	$(VENV)/bin/labkit gc --all

clean-venv:
	rm -rf $(VENV)
