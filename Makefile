# labkit: the two commands a new machine needs are `make report` and `make test` (see README).
# Both install what they need by themselves (Debian packages as root, then a venv at .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := btrfs-progs xfsprogs e2fsprogs util-linux thin-provisioning-tools busybox-static fuse3 libfuse3-3 kmod dmsetup runc crun iptables mmdebstrap zstd libseccomp2 gcc libc6-dev strace \
                podman skopeo umoci chromium fonts-noto-cjk
# the kernel's own dm-thin runs in a qemu VM (labkit vm): Debian's kernel and qemu, without their GUI recommends
APT_VM_PACKAGES := qemu-system-x86 linux-image-amd64
PYTEST_ARGS ?=

RESULTS ?= data/results
REPORT_ARGS ?=

.PHONY: test report lab setup apt venv clean-venv gc

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Measure this machine and write an HTML report plus the CSVs it is drawn from (REPORT_ARGS="-p quick True" for a short run)
report: setup
	@mkdir -p $(RESULTS)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PY) -m papermill --no-progress-bar notebooks/report.ipynb $(RESULTS)/report.ipynb -p results $(RESULTS) $(REPORT_ARGS)
	$(PY) -m nbconvert --to html --no-input --log-level WARN $(RESULTS)/report.ipynb --output report.html
	@echo "report: $(RESULTS)/report.html"; echo "results:"; ls -1 $(RESULTS)/*.csv | sed 's/^/  /'

# JupyterLab on notebooks/, on 127.0.0.1 only; it prints its URL with the token
lab: setup
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,lab]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser --allow-root --notebook-dir notebooks

setup: apt venv

# install only what is missing; `apt-get update` only when something is
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	vmissing=$$(for p in $(APT_VM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing$$vmissing" ]; then \
	  echo "apt-get install $$missing $$vmissing"; \
	  apt-get update -qq; \
	  if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	  if [ -n "$$vmissing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$vmissing >/dev/null; fi; \
	fi

# editable_mode=compat: a plain .pth path entry instead of setuptools' import-hook finder, whose own imports
# cost every `labkit` command ~6 ms (docs/performance.md)
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

gc: setup
	$(VENV)/bin/labkit gc --all

clean-venv:
	rm -rf $(VENV)
