from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nubes.hypervisor.qemu import accel as accel_mod
from nubes.hypervisor.qemu.accel import Accel, detect_accel

VMX = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n\nprocessor\t: 1\nflags\t\t: fpu vmx\n"
SVM = "processor\t: 0\nflags\t\t: fpu svm lm\n"
NONE = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor\nvmx flags\t: ept\n"


@pytest.fixture
def kvm(tmp_path: Path) -> Path:
    path = tmp_path / "kvm"
    path.write_text("")
    return path


def cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


def api12(fd: int) -> int:
    return 12


@pytest.mark.parametrize("text", [VMX, SVM])
def test_kvm_when_flag_device_and_api(tmp_path: Path, kvm: Path, text: str) -> None:
    assert detect_accel(kvm, cpuinfo(tmp_path, text), api12) == Accel("kvm")


def test_tcg_without_vmx_or_svm(tmp_path: Path, kvm: Path) -> None:
    # "vmx flags" lines (VMX sub-features) are not the flags line.
    result = detect_accel(kvm, cpuinfo(tmp_path, NONE), api12)
    assert result.name == "tcg"
    assert "vmx/svm" in result.note


def test_tcg_when_device_missing(tmp_path: Path) -> None:
    result = detect_accel(tmp_path / "nokvm", cpuinfo(tmp_path, VMX), api12)
    assert result.name == "tcg"
    assert "cannot open" in result.note


def test_tcg_when_device_cannot_open_read_write(tmp_path: Path) -> None:
    # A directory refuses O_RDWR even for root, unlike a read-only mode.
    result = detect_accel(tmp_path, cpuinfo(tmp_path, VMX), api12)
    assert result.name == "tcg"
    assert "read-write" in result.note


def test_tcg_when_ioctl_fails(tmp_path: Path, kvm: Path) -> None:
    def broken(fd: int) -> int:
        raise OSError(25, "Inappropriate ioctl for device")

    result = detect_accel(kvm, cpuinfo(tmp_path, VMX), broken)
    assert result.name == "tcg"
    assert "KVM_GET_API_VERSION" in result.note


def test_tcg_on_unexpected_api_version(tmp_path: Path, kvm: Path) -> None:
    assert detect_accel(kvm, cpuinfo(tmp_path, VMX), lambda fd: 11).name == "tcg"


def test_tcg_when_cpuinfo_unreadable(tmp_path: Path, kvm: Path) -> None:
    assert detect_accel(kvm, tmp_path / "missing", api12).name == "tcg"


def test_host_accel_logs_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(accel_mod, "detect_accel", lambda: Accel("tcg", "no vmx"))
    accel_mod.host_accel.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="nubes.hypervisor"):
            assert accel_mod.host_accel() == Accel("tcg", "no vmx")
            assert accel_mod.host_accel() == Accel("tcg", "no vmx")
        messages = [r.getMessage() for r in caplog.records if r.name == "nubes.hypervisor"]
        assert len(messages) == 1
        assert "no vmx" in messages[0]
    finally:
        accel_mod.host_accel.cache_clear()
