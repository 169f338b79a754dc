"""The tiny image: Debian's cloud kernel + a busybox/dropbear initramfs + an empty ext4 data disk.

Built offline from packages already on the host (linux-image-cloud-amd64, busybox-static,
dropbear-bin) in a few seconds, and cached by its inputs. The guest reads its NoCloud seed itself
(see files/tiny-init), so it boots in seconds under software emulation, which makes it the
guest of choice for integration tests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nubes.errors import DriverError
from nubes.imagebuild.cpio import CpioWriter
from nubes.storage.tools import COPY_LIMITS, INSPECT_LIMITS, run_limited

READY_LINE = "nubes-tiny: ready"  # printed on the serial console once the guest is set up
# quiet: every console byte is slow under emulation. The self-tests and zeroing of allocations
# cost ~0.5 s of a 3 s boot and guard nothing a throwaway test guest needs. (pci=noacpi would
# save 0.6 s more but costs SMP and MSI on q35; a PVH vmlinux boots faster but without APIC.)
# console=tty0 too, so the VGA screen (a browser's VNC console) shows the boot; ttyS0 last, so
# /dev/console, the shell and the ready line stay on the serial port
CMDLINE = "console=tty0 console=ttyS0 quiet cryptomgr.notests init_on_alloc=0"
DISK_SIZE = "64M"
BUILDER_VERSION = "1"  # bump when the build changes in ways the inputs do not show

# modprobe names; their dependencies come from modules.dep
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "isofs", "button", "evdev")
BUSYBOX = Path("/usr/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    disk: Path
    disk_format: str
    kernel: Path
    initrd: Path
    cmdline: str


@dataclass(frozen=True)
class HostInputs:
    kernel: Path
    modules_dir: Path
    busybox: Path
    dropbear: Path


def _version_key(release: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", release)]


def find_inputs() -> HostInputs:
    """The newest cloud kernel with its modules, and the userland binaries. Raises DriverError."""
    kernels = []
    for path in Path("/boot").glob("vmlinuz-*-cloud-amd64"):
        release = path.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / release / "modules.dep").is_file():
            kernels.append((release, path))
    if not kernels:
        raise DriverError("no cloud kernel found: install linux-image-cloud-amd64")
    release, kernel = max(kernels, key=lambda rk: _version_key(rk[0]))
    for binary, package in ((BUSYBOX, "busybox-static"), (DROPBEAR, "dropbear-bin")):
        if not binary.is_file():
            raise DriverError(f"{binary} not found: install {package}")
    return HostInputs(kernel, Path("/lib/modules") / release, BUSYBOX, DROPBEAR)


def module_load_order(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """Paths (relative to modules_dir) of wanted modules and their dependencies, deps first.

    Modules missing from this kernel (built in, or absent) are skipped.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        name = Path(target).name.split(".ko")[0].replace("-", "_")
        by_name[name] = target
    order: list[str] = []

    def visit(target: str) -> None:
        if target in order:
            return
        for dep in reversed(deps.get(target, [])):  # modules.dep lists the deepest last
            visit(dep)
        order.append(target)

    for name in wanted:
        found = by_name.get(name.replace("-", "_"))
        if found is not None:
            visit(found)
    return order


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects a (trusted, host) binary loads, found by ldd."""
    out = subprocess.run(  # noqa: S603 - fixed argv on a host binary
        ["ldd", str(binary)], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    libs = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _file(name: str) -> bytes:
    return resources.files("nubes.imagebuild").joinpath("files", name).read_bytes()


_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",  # no password; "!" would lock SSH keys out too
    "etc/group": "root:x:0:\n",
    "etc/shells": "/bin/sh\n/bin/ash\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/profile": 'export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nexport PS1="\\h:\\w# "\n',
    # after /init: a shell on the console (cttyhack takes the last console, ttyS0), a login
    # prompt on the VGA screen (tty1), clean unmount at poweroff
    "etc/inittab": (
        "::respawn:/bin/cttyhack /bin/sh -l\n"
        "tty1::respawn:/bin/getty 38400 tty1\n"
        "::ctrlaltdel:/sbin/reboot\n"
        "::shutdown:/bin/umount -a -r\n"
    ),
}


def _busybox_applets(busybox: Path) -> list[str]:
    out = subprocess.run(  # noqa: S603 - fixed argv on a host binary
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return [a for a in out.split() if re.fullmatch(r"[A-Za-z0-9_.\[\-]+", a)]


def build_initramfs(inputs: HostInputs, modules: list[str]) -> bytes:
    """The gzip'd newc cpio archive: busybox, dropbear and its libraries, modules, /init."""
    arc = CpioWriter()
    for d in ("proc", "sys", "dev", "run", "tmp", "mnt", "data", "etc/dropbear", "var/log"):
        arc.add_dir(d)
    arc.add_dir("root", 0o700)
    arc.add_chardev("dev/console", 5, 1)  # the kernel opens it before /init runs
    arc.add_file("bin/busybox", inputs.busybox.read_bytes(), 0o755)
    for applet in _busybox_applets(inputs.busybox):
        if applet != "busybox":
            arc.add_symlink(f"bin/{applet}", "busybox")
    for alias in ("sbin", "usr/bin", "usr/sbin"):
        arc.add_symlink(alias, "/bin")
    arc.add_file("bin/dropbear", inputs.dropbear.read_bytes(), 0o755)
    for lib in shared_libraries(inputs.dropbear):
        # same absolute path as on the host, where ld.so and ldd expect it
        arc.add_file(str(lib), lib.resolve().read_bytes(), 0o755)
    for rel in modules:
        arc.add_file(f"lib/modules/{Path(rel).name}", (inputs.modules_dir / rel).read_bytes())
    arc.add_file("etc/nubes/modules", "".join(Path(m).name + "\n" for m in modules).encode())
    for name, text in _ETC.items():
        arc.add_file(name, text.encode(), 0o600 if name == "etc/shadow" else 0o644)
    arc.add_file("etc/acpi/PWRF/00000080", b"#!/bin/sh\npoweroff\n", 0o755)
    arc.add_file("etc/nubes/seed.awk", _file("tiny-seed.awk"))
    arc.add_file("etc/nubes/udhcpc", _file("tiny-udhcpc"), 0o755)
    arc.add_file("init", _file("tiny-init"), 0o755)
    raw = io.BytesIO()
    arc.write(raw)
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _cache_key(inputs: HostInputs, modules: list[str]) -> str:
    h = hashlib.sha256(BUILDER_VERSION.encode())
    files = [inputs.kernel, inputs.busybox, inputs.dropbear, *shared_libraries(inputs.dropbear)]
    files += [inputs.modules_dir / m for m in modules]
    for path in files:
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for name in ("tiny-init", "tiny-udhcpc", "tiny-seed.awk"):
        h.update(_file(name))
    h.update(json.dumps(_ETC, sort_keys=True).encode() + CMDLINE.encode() + DISK_SIZE.encode())
    return h.hexdigest()[:16]


def _build_disk(dest: Path, work: Path) -> None:
    raw = work / "disk.raw"
    run_limited(["mkfs.ext4", "-q", "-F", "-L", "data", str(raw), DISK_SIZE], INSPECT_LIMITS)
    run_limited(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(dest)],
        COPY_LIMITS,
    )
    raw.unlink()


def _image(root: Path) -> BuiltImage:
    return BuiltImage(
        disk=root / "disk.qcow2",
        disk_format="qcow2",
        kernel=root / "vmlinuz",
        initrd=root / "initrd.img",
        cmdline=CMDLINE,
    )


def build_tiny(out_dir: Path, progress: Progress | None = None) -> BuiltImage:
    """Build (or reuse the cached build of) the tiny image under out_dir. Raises DriverError."""
    say = progress or (lambda _msg: None)
    inputs = find_inputs()
    modules = module_load_order(inputs.modules_dir, MODULES)
    key = _cache_key(inputs, modules)
    final = out_dir / f"tiny-{key}"
    if (final / "manifest.json").is_file():
        say(f"tiny image {key} is cached in {final}")
        return _image(final)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".tiny-{key}-"))
    try:
        say(f"kernel {inputs.kernel.name}, {len(modules)} modules")
        shutil.copyfile(inputs.kernel, work / "vmlinuz")
        initrd = build_initramfs(inputs, modules)
        (work / "initrd.img").write_bytes(initrd)
        say(f"initramfs {len(initrd) / 2**20:.1f} MiB (busybox, dropbear, /init)")
        _build_disk(work / "disk.qcow2", work)
        say(f"data disk {DISK_SIZE} ext4 (qcow2)")
        manifest = {"key": key, "kernel": str(inputs.kernel), "modules": modules}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.chmod(work, 0o755)
        try:
            os.rename(work, final)
        except OSError:  # a concurrent build finished first; its result is just as good
            if not (final / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"tiny image {key} built in {final}")
    return _image(final)
