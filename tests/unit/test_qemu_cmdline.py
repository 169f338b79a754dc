"""Golden tests for the QEMU argv builder: any change to the command line shows up here."""

from __future__ import annotations

from pathlib import Path

import pytest

from nubes.hypervisor.base import BootSpec, InstanceSpec, NicSpec
from nubes.hypervisor.qemu.cmdline import build_argv, guest_id

D = "/run/nubes/i-1"
COMMON_HEAD = [
    "-nodefaults", "-no-user-config", "-display", "none",
    "-msg", "timestamp=on",
    "-pidfile", f"{D}/qemu.pid",
    "-chardev", f"socket,id=qmp,path={D}/qmp.sock,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
    "-chardev",
    f"socket,id=serial0,path={D}/serial.sock,server=on,wait=off,"
    f"logfile={D}/console.log,logappend=on",
    "-serial", "chardev:serial0",
    "-vnc", f"unix:{D}/vnc.sock,password=on",
    "-device", "VGA",
    "-drive", f"file={D}/disk.qcow2,format=qcow2,if=none,id=disk0,cache=writeback,discard=unmap",
    "-device", "virtio-blk-pci,drive=disk0,id=virtio-disk0,bootindex=1",
]  # fmt: skip

# empty PCIe root ports for hot-added volumes, last: the devices before keep their addresses
HOTPLUG = [
    arg
    for i in range(4)
    for arg in ("-device", f"pcie-root-port,id=hp{i},bus=pcie.0,chassis={i + 1}")
]


def make_spec(**kw: object) -> InstanceSpec:
    base: dict[str, object] = dict(
        id="i-1",
        vcpus=2,
        ram_mb=512,
        disk=Path(f"{D}/disk.qcow2"),
        seed=None,
        instance_dir=Path(D),
    )
    base.update(kw)
    return InstanceSpec(**base)  # type: ignore[arg-type]


def test_direct_kernel_tcg_two_nics_and_seed() -> None:
    spec = make_spec(
        seed=Path(f"{D}/seed.iso"),
        nics=(
            NicSpec(tap="tapaaaa1111", mac="52:54:00:00:00:01"),
            NicSpec(tap="tapbbbb2222", mac="52:54:00:00:00:02", mtu=1450),
        ),
        boot=BootSpec(
            kernel=Path("/images/vmlinuz"),
            initrd=Path("/images/initrd.img"),
            cmdline="console=ttyS0 root=/dev/vda",
        ),
    )
    assert build_argv(spec, "tcg", "qemu-system-x86_64") == [
        "qemu-system-x86_64",
        "-name", "guest=i-1,debug-threads=on",
        "-machine", "q35,accel=tcg",
        "-cpu", "max",
        "-smp", "2",
        "-m", "512",
        *COMMON_HEAD,
        "-drive", f"if=virtio,format=raw,readonly=on,file={D}/seed.iso",
        "-netdev", "tap,id=net0,ifname=tapaaaa1111,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:00:00:01,host_mtu=1500",
        "-netdev", "tap,id=net1,ifname=tapbbbb2222,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=net1,id=nic1,mac=52:54:00:00:00:02,host_mtu=1450",
        "-device", "virtio-rng-pci",
        *HOTPLUG,
        "-kernel", "/images/vmlinuz",
        "-initrd", "/images/initrd.img",
        "-append", "console=ttyS0 root=/dev/vda",
    ]  # fmt: skip


def test_disk_boot_kvm() -> None:
    spec = make_spec(vcpus=1, ram_mb=1024)
    assert build_argv(spec, "kvm", "/usr/bin/qemu-system-x86_64") == [
        "/usr/bin/qemu-system-x86_64",
        "-name", "guest=i-1,debug-threads=on",
        "-machine", "q35,accel=kvm",
        "-cpu", "host",
        "-smp", "1",
        "-m", "1024",
        *COMMON_HEAD,
        "-device", "virtio-rng-pci",
        *HOTPLUG,
    ]  # fmt: skip


def test_run_as_adds_runas_and_sandbox() -> None:
    argv = build_argv(make_spec(run_as="nubes-qemu"), "tcg", "qemu-system-x86_64")
    assert argv[-4:] == [
        "-runas", "nubes-qemu",
        "-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny",
    ]  # fmt: skip
    assert "-runas" not in build_argv(make_spec(), "tcg", "qemu-system-x86_64")


def test_never_no_shutdown_nor_daemonize() -> None:
    # A guest poweroff must end QEMU so the host sees SHUTOFF; -daemonize breaks spawn=deny.
    argv = build_argv(make_spec(run_as="nobody"), "tcg", "qemu-system-x86_64")
    assert "-no-shutdown" not in argv
    assert "-daemonize" not in argv


def test_kernel_without_initrd_or_cmdline() -> None:
    argv = build_argv(make_spec(boot=BootSpec(kernel=Path("/k"))), "tcg", "q")
    assert argv[-2:] == ["-kernel", "/k"]


def test_commas_in_paths_are_escaped() -> None:
    spec = make_spec(disk=Path("/var/a,b/disk.qcow2"), seed=Path("/var/a,b/seed.iso"))
    argv = build_argv(spec, "tcg", "q")
    assert "file=/var/a,,b/disk.qcow2,format=qcow2" in " ".join(argv)
    assert "if=virtio,format=raw,readonly=on,file=/var/a,,b/seed.iso" in argv


@pytest.mark.parametrize(
    "kw",
    [
        {"id": "bad,id"},
        {"id": "../etc"},
        {"id": ""},
        {"vcpus": 0},
        {"nics": (NicSpec(tap="tap,x", mac="52:54:00:00:00:01"),)},
        {"nics": (NicSpec(tap="tap0123456789abcdef", mac="52:54:00:00:00:01"),)},
        {"nics": (NicSpec(tap="tap1", mac="52:54:00:00:00:01,x"),)},
        {"nics": (NicSpec(tap="tap1", mac="52:54:00:00:00:01", mtu=10),)},
        {"run_as": "root;rm"},
        {"boot": BootSpec(initrd=Path("/i"))},
    ],
)
def test_invalid_specs_rejected(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_argv(make_spec(**kw), "tcg", "qemu-system-x86_64")


def test_unknown_accel_rejected() -> None:
    with pytest.raises(ValueError):
        build_argv(make_spec(), "hvf", "qemu-system-x86_64")


def test_the_guest_id_is_read_back_from_a_command_line() -> None:
    spec = make_spec(id="0c7b7c2e-1111-4222-8333-444455556666")
    assert guest_id(build_argv(spec, "tcg", "qemu-system-x86_64")) == spec.id
    assert guest_id(["qemu-system-x86_64", "-name", "guest=../x,debug-threads=on"]) is None
    assert guest_id(["sleep", "guest=i-1,debug-threads=on"]) is None  # not after -name


def test_an_installer_cd_boots_before_the_disk() -> None:
    spec = make_spec(vcpus=1, ram_mb=256, cdrom=Path("/var/lib/nubes/images/inst,1.iso"))
    assert build_argv(spec, "tcg", "qemu") == [
        "qemu",
        "-name", "guest=i-1,debug-threads=on",
        "-machine", "q35,accel=tcg",
        "-cpu", "max",
        "-smp", "1",
        "-m", "256",
        *COMMON_HEAD,
        "-drive",
        "file=/var/lib/nubes/images/inst,,1.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on",
        "-device", "ide-cd,drive=cd0,id=cdrom0,bootindex=0",
        "-device", "virtio-rng-pci",
        *HOTPLUG,
    ]  # fmt: skip


def test_the_cd_is_kept_in_the_registry_record(tmp_path: Path) -> None:
    from nubes.hypervisor.qemu.registry import spec_from_dict, spec_to_dict

    spec = make_spec(cdrom=tmp_path / "inst.iso", cdrom_once=True)
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict(spec_to_dict(make_spec())).cdrom is None


def test_eject_after_install_ends_qemu_at_the_installers_reboot() -> None:
    cd = Path("/i.iso")
    assert build_argv(make_spec(cdrom=cd, cdrom_once=True), "tcg", "q")[-1] == "-no-reboot"
    assert "-no-reboot" not in build_argv(make_spec(cdrom=cd), "tcg", "q")
    assert "-no-reboot" not in build_argv(make_spec(cdrom_once=True), "tcg", "q")  # no CD


def test_with_a_kernel_the_cd_is_only_a_drive() -> None:
    spec = make_spec(cdrom=Path("/i.iso"), boot=BootSpec(kernel=Path("/k")))
    argv = build_argv(spec, "tcg", "q")
    assert "ide-cd,drive=cd0,id=cdrom0" in argv  # -kernel's boot ROM has bootindex 0
