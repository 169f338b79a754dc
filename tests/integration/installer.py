"""A small installer CD, built from Debian packages already on the host (the cloud kernel,
busybox-static, isolinux, extlinux, xorriso), cached by its inputs like the tiny image.

The CD boots isolinux → the cloud kernel → an installer initramfs whose /init partitions the
biggest virtio disk (one bootable partition), makes an ext2 file system on it, copies a kernel
and a small system initramfs there, installs extlinux and its MBR, and powers off. The
installed system prints INSTALLED_MARKER and INSTALLED_READY on the serial console. The
cloud kernel has no AHCI driver, so the installer never reads the CD: all it installs is in
its own initramfs (the BIOS reads the CD for isolinux)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from nubes.imagebuild.cpio import CpioWriter
from nubes.imagebuild.tiny import (
    _busybox_applets,
    find_inputs,
    module_load_order,
    shared_libraries,
)

INSTALLER_DONE = "nubes-installer: done"
INSTALLED_MARKER = "nubes-installed: booted from the installed disk"
INSTALLED_READY = "nubes-installed: ready"
VERSION = "1"  # bump when the build changes in ways the inputs do not show

EXTLINUX = Path("/usr/bin/extlinux")
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
PART_START = 2048  # sectors: the partition begins at 1 MiB
PART_SECTORS = 128 * 2048  # 128 MiB

INSTALLER_INIT = """#!/bin/sh
export PATH=/bin
say() { echo "nubes-installer: $*"; }
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
while read -r mod; do insmod "/lib/modules/$mod" 2>/dev/null; done </etc/modules
say "started"
dev=
for try in 1 2 3 4 5 6 7 8 9 10; do
    size=0
    for b in /sys/block/vd*; do  # the blank disk is the biggest (the seed is a few KiB)
        [ -e "$b/size" ] || continue
        s=$(cat "$b/size"); [ "$s" -gt "$size" ] && size=$s && dev=/dev/${b##*/}
    done
    [ -n "$dev" ] && break; sleep 0.5
done
[ -n "$dev" ] || { say "FAIL: no disk"; poweroff -f; }
say "installing onto $dev"
dd if=/payload/mbr.sector of="$dev" bs=512 count=1 conv=notrunc 2>/dev/null  # partition table
blockdev --rereadpt "$dev"
for try in 1 2 3 4 5 6 7 8 9 10; do [ -b "${dev}1" ] && break; sleep 0.3; done
mke2fs -q -L system "${dev}1" || say "FAIL: mke2fs"
mkdir -p /mnt && mount -t ext2 "${dev}1" /mnt || say "FAIL: mount"
mkdir -p /mnt/boot
cp /payload/vmlinuz /payload/system.img /mnt/boot/
cat >/mnt/boot/extlinux.conf <<'CONF'
SERIAL 0 115200
DEFAULT system
TIMEOUT 0
LABEL system
  KERNEL /boot/vmlinuz
  APPEND initrd=/boot/system.img console=ttyS0 quiet
CONF
extlinux --install /mnt/boot >/dev/null 2>&1 || say "FAIL: extlinux"
sync; umount /mnt; sync
say "done"
poweroff -f
"""

SYSTEM_INIT = f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
echo "{INSTALLED_MARKER}"
echo "{INSTALLED_READY}"
while :; do sleep 3600; done
"""

ISOLINUX_CFG = """SERIAL 0 115200
DEFAULT install
TIMEOUT 0
LABEL install
  KERNEL /vmlinuz
  APPEND initrd=/install.img console=ttyS0 quiet
"""


def _busybox(arc: CpioWriter, busybox: Path) -> None:
    for d in ("proc", "sys", "dev", "mnt", "tmp", "etc"):
        arc.add_dir(d)
    arc.add_chardev("dev/console", 5, 1)
    arc.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in _busybox_applets(busybox):
        if applet != "busybox":
            arc.add_symlink(f"bin/{applet}", "busybox")
    arc.add_symlink("sbin", "/bin")


def _gz(arc: CpioWriter) -> bytes:
    raw = io.BytesIO()
    arc.write(raw)
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _mbr_sector() -> bytes:
    """syslinux's MBR code, then one active Linux partition (LBA only) and the signature."""
    code = MBR_BIN.read_bytes()[:440].ljust(446, b"\0")
    entry = bytes([0x80, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF])
    entry += struct.pack("<II", PART_START, PART_SECTORS)
    return code + entry + b"\0" * 48 + b"\x55\xaa"


def _installer_initramfs(kernel: Path, modules_dir: Path, modules: list[str]) -> bytes:
    inputs = find_inputs()
    system = CpioWriter()
    _busybox(system, inputs.busybox)
    system.add_file("init", SYSTEM_INIT.encode(), 0o755)
    arc = CpioWriter()
    _busybox(arc, inputs.busybox)
    arc.add_file("bin/extlinux", EXTLINUX.read_bytes(), 0o755)
    for lib in shared_libraries(EXTLINUX):
        arc.add_file(str(lib), lib.resolve().read_bytes(), 0o755)
    for rel in modules:
        arc.add_file(f"lib/modules/{Path(rel).name}", (modules_dir / rel).read_bytes())
    arc.add_file("etc/modules", "".join(Path(m).name + "\n" for m in modules).encode())
    arc.add_dir("payload")
    arc.add_file("payload/vmlinuz", kernel.read_bytes())
    arc.add_file("payload/system.img", _gz(system))
    arc.add_file("payload/mbr.sector", _mbr_sector())
    arc.add_file("init", INSTALLER_INIT.encode(), 0o755)
    return _gz(arc)


def build_installer(cache: Path) -> Path:
    """The installer ISO, built once per set of inputs under cache."""
    inputs = find_inputs()
    modules = module_load_order(inputs.modules_dir, ("virtio_pci", "virtio_blk"))
    h = hashlib.sha256((VERSION + INSTALLER_INIT + SYSTEM_INIT + ISOLINUX_CFG).encode())
    for path in (inputs.kernel, inputs.busybox, EXTLINUX, MBR_BIN, ISOLINUX_BIN, LDLINUX_C32):
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    final = cache / f"installer-{h.hexdigest()[:16]}" / "installer.iso"
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=".build-"))
    try:
        tree = work / "tree"
        (tree / "isolinux").mkdir(parents=True)
        shutil.copyfile(ISOLINUX_BIN, tree / "isolinux" / "isolinux.bin")
        shutil.copyfile(LDLINUX_C32, tree / "isolinux" / "ldlinux.c32")
        (tree / "isolinux" / "isolinux.cfg").write_text(ISOLINUX_CFG)
        shutil.copyfile(inputs.kernel, tree / "vmlinuz")
        initrd = _installer_initramfs(inputs.kernel, inputs.modules_dir, modules)
        (tree / "install.img").write_bytes(initrd)
        iso = work / "installer.iso"
        subprocess.run(
            ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "NUBES_INSTALL",
             "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
             "-boot-load-size", "4", "-boot-info-table", str(tree)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        os.replace(iso, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
