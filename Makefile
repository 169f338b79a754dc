# nubes: `make demo` and `make test` on a fresh Debian 12 machine, as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .cache/stamps
# the real OpenStack clients, pinned, in a venv of their own (tests/openstack_env.py runs them)
OPENSTACK_VENV := .venv-openstack
OPENSTACK_CLIENTS := python-openstackclient==10.5.0 openstacksdk==4.22.0
# Ansible's openstack.cloud 2.5.0 (bundled in ansible 12.3.0) reads `openstack.version`, which
# openstacksdk imports on `import openstack` only up to 4.14.0: a venv of its own
ANSIBLE_VENV := .venv-ansible
ANSIBLE_CLIENTS := ansible==12.3.0 openstacksdk==4.14.0
APT_PACKAGES := qemu-system-x86 qemu-utils dnsmasq-base dnsmasq-utils nftables iproute2 busybox-static \
	dropbear-bin linux-image-cloud-amd64 cpio e2fsprogs fdisk openssh-client tcpdump iputils-ping \
	python3-venv python3-dev gcc mmdebstrap extlinux syslinux-common postgresql \
	runc umoci skopeo xorriso isolinux chromium chromium-driver novnc
OVS_PACKAGES := openvswitch-switch openvswitch-common

.PHONY: deps venv demo test lint unit functional integration clean-lab help

help:
	@echo "make demo   install everything and run a 1-host cloud with two instances that ping"
	@echo "make test   install everything and run the whole suite (lint, types, tests)"

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	@touch $@

# Open vSwitch for the `ovs` network driver: each host's agent runs its own ovsdb-server and
# ovs-vswitchd, so Debian's init script must not start a system-wide one. A policy-rc.d that
# refuses every service start (exit 101) does that during the install; any policy-rc.d that
# was there before (a container's) is put back after.
POLICY_RC := /usr/sbin/policy-rc.d
$(STAMPS)/ovs: Makefile $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	saved=; if [ -e $(POLICY_RC) ]; then saved=$(POLICY_RC).nubes-saved; mv -f $(POLICY_RC) $$saved; fi; \
	printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC) && chmod 755 $(POLICY_RC); \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(OVS_PACKAGES); \
	rc=$$?; rm -f $(POLICY_RC); if [ -n "$$saved" ]; then mv -f $$saved $(POLICY_RC); fi; exit $$rc
	@touch $@

# guests' QEMU drops to this user (-runas) after opening its devices
$(STAMPS)/user: Makefile
	@mkdir -p $(STAMPS)
	id -u nubes-qemu >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin nubes-qemu
	@touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/apt
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	ln -sf $(CURDIR)/$(VENV)/bin/nubes /usr/local/bin/nubes
	@touch $@

$(STAMPS)/openstack-clients: Makefile $(STAMPS)/apt
	test -x $(OPENSTACK_VENV)/bin/python || /usr/bin/python3 -m venv $(OPENSTACK_VENV)
	$(OPENSTACK_VENV)/bin/python -m pip install -q --upgrade pip
	$(OPENSTACK_VENV)/bin/python -m pip install -q $(OPENSTACK_CLIENTS)
	@touch $@

$(STAMPS)/ansible: Makefile $(STAMPS)/apt
	test -x $(ANSIBLE_VENV)/bin/python || /usr/bin/python3 -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/python -m pip install -q --upgrade pip
	$(ANSIBLE_VENV)/bin/python -m pip install -q $(ANSIBLE_CLIENTS)
	@touch $@

deps: $(STAMPS)/apt $(STAMPS)/ovs $(STAMPS)/user $(STAMPS)/venv $(STAMPS)/openstack-clients $(STAMPS)/ansible

demo: deps
	$(PY) -m nubes.demo

lint: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: deps
	$(PY) -m pytest -q tests/unit

functional: deps
	$(PY) -m pytest -q tests/functional

integration: deps
	$(PY) -m pytest -q tests/integration

test: deps lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=40 tests

clean-lab: deps
	$(VENV)/bin/nubes lab down
