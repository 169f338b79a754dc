"""Choose the QEMU accelerator: KVM when the host can really run guests with it, TCG otherwise.

/dev/kvm alone proves nothing: some hosts (nested clouds, microVMs) expose the device while the
CPU lacks vmx/svm, and QEMU then fails at start. So KVM needs all three: the device opens
read-write, the CPU advertises vmx or svm, and KVM_GET_API_VERSION answers the stable API (12).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("nubes.hypervisor")

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO=0xAE, 0x00)
KVM_STABLE_API = 12


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    note: str = ""  # why KVM is not used, empty when it is


def _kvm_api_version(fd: int) -> int:
    return fcntl.ioctl(fd, KVM_GET_API_VERSION)


def _cpu_has_virt(cpuinfo: str) -> bool:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and {"vmx", "svm"} & set(value.split()):
            return True
    return False


def detect_accel(
    kvm_path: Path = Path("/dev/kvm"),
    cpuinfo_path: Path = Path("/proc/cpuinfo"),
    api_version: Callable[[int], int] = _kvm_api_version,
) -> Accel:
    """Probe the host. Never raises: any doubt means TCG, with the reason in the note."""
    try:
        cpuinfo = cpuinfo_path.read_text()
    except OSError as exc:
        return Accel("tcg", f"cannot read {cpuinfo_path}: {exc.strerror}")
    if not _cpu_has_virt(cpuinfo):
        return Accel("tcg", "CPU has no vmx/svm flag (no hardware virtualization)")
    try:
        fd = os.open(kvm_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return Accel("tcg", f"cannot open {kvm_path} read-write: {exc.strerror}")
    try:
        version = api_version(fd)
    except OSError as exc:
        return Accel("tcg", f"KVM_GET_API_VERSION on {kvm_path} failed: {exc.strerror}")
    finally:
        os.close(fd)
    if version != KVM_STABLE_API:
        return Accel("tcg", f"unexpected KVM API version {version}")
    return Accel("kvm")


@functools.cache
def host_accel() -> Accel:
    """The host's accelerator, probed once per process and logged once."""
    accel = detect_accel()
    if accel.name == "kvm":
        log.info("using KVM acceleration")
    else:
        log.warning("KVM not usable, using software emulation (TCG): %s", accel.note)
    return accel
