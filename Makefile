# Two commands on a fresh Debian 12 machine (as root): `make lab` and `make test`.
# Every target installs what it needs and is safe to run again.
SHELL := /bin/bash
.ONESHELL:
.SILENT:
.SHELLFLAGS := -eu -o pipefail -c

ROOT        := $(abspath .)
VENV        := $(ROOT)/.venv
PY          := $(VENV)/bin/python
BIN         := $(VENV)/bin
export CONTAINERS_CONF := $(ROOT)/tools/podman/containers.conf
export ANSIBLE_CONFIG  := $(ROOT)/ansible.cfg
export PATH            := $(BIN):$(PATH)

# Debian packages the controller needs: podman and its runtime for the lab, debootstrap
# to build the base image without a registry, pflogsumm to compare reports against,
# PostgreSQL for the shared-store tests, sshd for the queue collector's tests, nsd for
# the DNS tests, testssl.sh to probe the lab's TLS, swaks for hand checks; chromium
# (headless), certutil to trust the lab CA in its throw-away profile and a font, for the
# checks that open pages as a person would (tests/support/chromium.py).  Tests start
# their own servers on loopback.
DEB_PACKAGES := podman runc catatonit debootstrap uidmap pflogsumm postgresql swaks \
                openssh-client openssh-server nsd openssl python3-venv git make testssl.sh \
                chromium libnss3-tools fonts-dejavu-core

.PHONY: help deps deps-system venv lab lab-down lint unit slow check molecule e2e test bench clean

help:
	@echo "make lab       build and start the container lab, converge it, check mail flows"
	@echo "make test      lint, unit tests, molecule, the lab end to end, EC2 against moto"
	@echo "make lab-down  remove exactly what the lab made"
	@echo "make check     lint and the fast unit tests: feedback in a few minutes"
	@echo "make bench     benchmarks side by side with pflogsumm and stock Postfix"

deps: deps-system venv

deps-system:
	missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done)
	if [ -n "$$missing" ]; then
	  echo ">>> installing Debian packages:" $$missing
	  apt-get update -qq
	  # The servers among them (sshd, PostgreSQL, nsd) are for tests, which start their
	  # own on loopback: keep the packages from starting system-wide ones.
	  blocker=""
	  if [ ! -e /usr/sbin/policy-rc.d ]; then
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
	    blocker=/usr/sbin/policy-rc.d
	  fi
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	    || { [ -z "$$blocker" ] || rm -f "$$blocker"; exit 1; }
	  [ -z "$$blocker" ] || rm -f "$$blocker"
	fi

# The venv runs on Debian's own Python, the interpreter the hosts run mailops on: a
# newer one found first on PATH (pyenv, say) would hide what differs there (3.11.2's re).
SYSPY := $(firstword $(wildcard /usr/bin/python3) python3)

venv:
	version='import sys; print(sys.version)'
	if [ -x $(PY) ] && [ "$$($(PY) -c "$$version")" != "$$($(SYSPY) -c "$$version")" ]; then
	  echo ">>> the venv does not run on $(SYSPY): making it again"
	  rm -rf $(VENV)
	fi
	$(MAKE) --no-print-directory $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(SYSPY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

lab: deps
	$(PY) tools/lab.py up

lab-down: venv
	$(PY) tools/lab.py down

lint: venv
	$(BIN)/ruff check scripts tests bench tools plugins
	$(BIN)/ruff format --check scripts tests bench tools plugins
	$(BIN)/mypy
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint

# The unit tests run on both cores (pytest-xdist: every server a test starts takes a free
# loopback port and a temporary directory of its own).  `unit` leaves out those marked
# slow (the EC2 playbooks against moto, a million-line log next to pflogsumm, whole
# ansible-playbook runs); `slow` runs just those, and `make test` runs both.
XDIST := -n 2

unit: venv
	$(BIN)/pytest -m 'not lab and not slow' -q $(XDIST)

slow: venv
	$(BIN)/pytest -m 'slow and not lab' -q $(XDIST)

check: lint unit

molecule: deps
	$(PY) tools/run_molecule.py

e2e: deps
	$(PY) tools/lab.py test

test: deps lint unit slow molecule e2e

bench: deps
	$(PY) bench/run.py

clean: lab-down
	rm -rf $(VENV) .lab
