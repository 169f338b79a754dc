"""The debian image: Debian 12 with real cloud-init and OpenSSH, as a whole bootable disk.

Built like a downloaded cloud image, so instances boot it from its own disk (no -kernel):
mmdebstrap installs the packages from this machine's Debian mirror into a directory, then
- a raw file gets an MBR partition table (sfdisk works on plain files),
- `mkfs.ext4 -d ROOT -E offset=1MiB` fills the partition without mounting anything (no partition
  device nodes appear on this machine),
- extlinux is installed through a loop mount at the partition's offset, and extlinux's mbr.bin
  goes into the first 440 bytes,
- qemu-img converts the raw disk to a compressed-free qcow2.

The result is cached under the cache directory by its inputs (package list, mirror, builder
version): a second build reuses it unless asked to rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nubes.errors import DriverError
from nubes.storage.tools import COPY_LIMITS, run_limited

BUILDER_VERSION = "1"  # bump when the build changes in ways the inputs do not show
SUITE = "bookworm"
DEFAULT_USER = "debian"
# cloud-init's closing line on the console ("Cloud-init v. 22.4.2 finished at ...") is
# replaced by this one, so readiness needs no pattern matching beyond a substring.
READY_LINE = "nubes-debian: cloud-init finished"
DISK_SIZE_MB = 2048
PART_OFFSET = 1 << 20  # the root partition starts at 1 MiB
ROOT_LABEL = "nubes-root"
MBR = Path("/usr/lib/EXTLINUX/mbr.bin")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
DEB_CACHE = "debs"  # the downloaded packages, beside each build's own cache directory
CMDLINE = (
    f"root=LABEL={ROOT_LABEL} ro console=ttyS0,115200n8 quiet "
    # every console byte and every self-test is slow under emulation
    "cryptomgr.notests init_on_alloc=0"
)
PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-cloud-amd64",
    "extlinux",
    "cloud-init",
    "cloud-guest-utils",  # growpart: the root partition fills the flavor's disk
    "fdisk",
    "openssh-server",
    "sudo",
    "netplan.io",  # cloud-init renders network-config v2 to netplan -> systemd-networkd
    "systemd-resolved",
    "iproute2",
    "iputils-ping",
    "curl",
    "procps",
    "ca-certificates",
)

CLOUD_INIT_MODULES = (
    "seed_random", "bootcmd", "write-files", "growpart", "resizefs", "disk_setup", "mounts",
    "set_hostname", "update_hostname", "update_etc_hosts", "ca-certs", "users-groups", "ssh",
)  # fmt: skip
CLOUD_CONFIG_MODULES = ("set-passwords", "apt-configure", "timezone", "runcmd")
CLOUD_FINAL_MODULES = (
    "package-update-upgrade-install", "write-files-deferred", "scripts-vendor",
    "scripts-per-once", "scripts-per-boot", "scripts-per-instance", "scripts-user",
    "ssh-authkey-fingerprints", "keys-to-console", "phone-home", "final-message",
    "power-state-change",
)  # fmt: skip

Progress = Callable[[str], None]


def _module_list(key: str, modules: tuple[str, ...]) -> str:
    return f"{key}:\n" + "".join(f" - {m}\n" for m in modules)


_FILES = {
    "etc/fstab": f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n",
    "etc/hostname": "debian\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    # Only the NoCloud seed nubes attaches (and None): no probing of absent metadata sources.
    "etc/cloud/cloud.cfg.d/90-nubes.cfg": (
        "datasource_list: [ NoCloud, ConfigDrive, None ]\n"
        f'final_message: "{READY_LINE} (cloud-init $version, up $UPTIME s)"\n'
        # Each module costs seconds of Python under emulation: only what a server uses
        # (no snap, lxd, landscape, puppet, byobu, locale generation...).
        + _module_list("cloud_init_modules", CLOUD_INIT_MODULES)
        + _module_list("cloud_config_modules", CLOUD_CONFIG_MODULES)
        + _module_list("cloud_final_modules", CLOUD_FINAL_MODULES)
    ),
    # Host keys are made per instance at first boot (cloud-init's ssh module); sshd makes its
    # own if an image runs without cloud-init, instead of failing its config test.
    "etc/systemd/system/ssh.service.d/nubes-keys.conf": (
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
        "ExecStartPre=/usr/sbin/sshd -t\n"
    ),
}


@dataclass(frozen=True)
class BuiltImage:
    disk: Path
    disk_format: str
    build_seconds: float  # of the build that made it (0 when measured before it was recorded)


def mirror_sources(apt_dir: Path = Path("/etc/apt")) -> list[Path]:
    """The machine's deb822 .sources files that name Debian bookworm (what apt here uses)."""
    found = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text()
        except OSError:
            continue
        suites = re.findall(r"^Suites:\s*(.+)$", text, re.MULTILINE)
        if any(SUITE in s.split() for s in suites) and "/debian" in text:
            found.append(path)
    return found


def mirror_args(apt_dir: Path = Path("/etc/apt")) -> list[str]:
    """mmdebstrap mirror arguments: the machine's source files, or a sources.list line."""
    files = mirror_sources(apt_dir)
    if files:
        return [str(f) for f in files]
    legacy = apt_dir / "sources.list"
    if legacy.is_file() and re.search(rf"^deb\s.*\s{SUITE}\s", legacy.read_text(), re.MULTILINE):
        return [str(legacy)]
    return [FALLBACK_MIRROR]


def cache_key(mirrors: list[str]) -> str:
    h = hashlib.sha256(f"{BUILDER_VERSION}\0{SUITE}\0{DISK_SIZE_MB}\0{CMDLINE}\n".encode())
    h.update("\0".join(PACKAGES).encode())
    h.update(json.dumps(_FILES, sort_keys=True).encode())
    for m in mirrors:
        path = Path(m)
        h.update(path.read_bytes() if path.is_file() else m.encode())
    return h.hexdigest()[:16]


def deb_cache_hooks(debs: Path) -> tuple[list[str], list[str]]:
    """mmdebstrap's options that fill /var/cache/apt/archives from debs before apt runs and
    copy what apt downloaded back (its man page's sync-in/sync-out recipe): the VM and the
    container builds share one directory, so the second fetches only what the first lacked.
    Returns (options before the other hooks, the customize hook that saves the debs)."""
    q = shlex.quote(str(debs))
    before = [
        "--skip=essential/unlink",  # keep the essential debs in the archive for sync-out
        f'--setup-hook=mkdir -p {q} "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {q} /var/cache/apt/archives/",
    ]
    return before, [f"--customize-hook=sync-out /var/cache/apt/archives {q}"]


def mmdebstrap_command(
    root: Path,
    mirrors: list[str],
    packages: tuple[str, ...],
    hooks: list[str],
    debs: Path | None = None,
) -> list[str]:
    """A minbase mmdebstrap of packages into the directory root, with more options and
    hooks (in order, after our own first customize hook)."""
    before, after = deb_cache_hooks(debs) if debs is not None else ([], [])
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--format=directory",
        "--aptopt=Acquire::Check-Valid-Until false",
        "--aptopt=APT::Install-Recommends false",
        "--include=" + ",".join(packages),
        *before,
        # no installer leftovers; keys made here would be shared by every instance
        "--customize-hook=rm -f $1/etc/ssh/ssh_host_*_key $1/etc/ssh/ssh_host_*_key.pub",
        *hooks,
        *after,
        "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*.bin",
        SUITE,
        str(root),
        *mirrors,
    ]


def mmdebstrap_argv(root: Path, mirrors: list[str], debs: Path | None = None) -> list[str]:
    return mmdebstrap_command(
        root,
        mirrors,
        PACKAGES,
        [
            "--customize-hook=chroot $1 systemctl enable systemd-networkd systemd-resolved",
            # a weekly e2fsck helper that costs seconds at every boot under emulation
            "--customize-hook=chroot $1 systemctl mask e2scrub_reap.service",
        ],
        debs,
    )


def _run_streaming(argv: list[str], say: Progress, timeout: float) -> None:
    """Run argv, showing its progress lines; raise DriverError with its last lines on failure."""
    tail: list[str] = []
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(  # noqa: S603 - argv list of constant parts and our own paths
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"},
    )  # fmt: skip
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            if line.startswith(("I: ", "Unpacking ", "Setting up ")):
                say(f"mmdebstrap: {line.removeprefix('I: ')[:100]}")
            if time.monotonic() > deadline:
                proc.kill()
                raise DriverError(f"{argv[0]} did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        raise DriverError(f"{argv[0]} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def extlinux_conf(kernel: str, initrd: str) -> str:
    # absolute paths are from the root of the filesystem extlinux is installed on
    return (
        "DEFAULT debian\nPROMPT 0\nTIMEOUT 0\nLABEL debian\n"
        f"  LINUX /boot/{kernel}\n  INITRD /boot/{initrd}\n  APPEND {CMDLINE}\n"
    )


def customize(root: Path) -> None:
    """Our files, and the bootloader's configuration for the installed kernel."""
    for rel, text in _FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o644)
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise DriverError("the image has no kernel in /boot")
    kernel = kernels[-1].name
    initrd = "initrd.img-" + kernel.removeprefix("vmlinuz-")
    if not (root / "boot" / initrd).is_file():
        raise DriverError(f"the image has no /boot/{initrd}")
    conf = root / "boot/extlinux/extlinux.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(extlinux_conf(kernel, initrd))
    (root / "etc/machine-id").write_text("")  # systemd makes one per instance
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()


def partition(raw: Path) -> None:
    """One bootable Linux partition from 1 MiB to the end, MBR label."""
    script = f"label: dos\nstart={PART_OFFSET // 512}, type=83, bootable\n"
    proc = subprocess.run(  # noqa: S603 - constant argv
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)],
        input=script, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise DriverError(f"sfdisk failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def _loop_mount(raw: Path, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    run_limited(["mount", "-o", f"loop,offset={PART_OFFSET}", str(raw), str(mountpoint)])
    try:
        yield mountpoint
    finally:
        run_limited(["umount", str(mountpoint)])


def make_disk(root: Path, raw: Path, work: Path) -> None:
    """The bootable raw disk from the root directory."""
    with raw.open("wb") as fh:
        fh.truncate(DISK_SIZE_MB << 20)
    partition(raw)
    fs_kib = ((DISK_SIZE_MB << 20) - PART_OFFSET) // 1024
    run_limited(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            ROOT_LABEL,
            "-d",
            str(root),
            "-E",
            f"offset={PART_OFFSET}",
            str(raw),
            f"{fs_kib}k",
        ],  # fmt: skip
        COPY_LIMITS,
    )
    with _loop_mount(raw, work / "mnt") as mnt:
        run_limited(["extlinux", "--install", str(mnt / "boot/extlinux")])
    (work / "mnt").rmdir()
    mbr = MBR.read_bytes()[:440]
    with raw.open("r+b") as fh:
        fh.write(mbr)


def _image(final: Path) -> BuiltImage:
    manifest = json.loads((final / "manifest.json").read_text())
    return BuiltImage(final / "disk.qcow2", "qcow2", float(manifest.get("build_seconds", 0)))


def build_debian(
    out_dir: Path, progress: Progress | None = None, rebuild: bool = False, debs: Path | None = None
) -> BuiltImage:
    """Build (or reuse the cached build of) the debian image under out_dir, with the package
    cache debs (default: `debs` beside out_dir). Raises DriverError."""
    say = progress or (lambda _msg: None)
    for tool in ("mmdebstrap", "sfdisk", "mkfs.ext4", "extlinux", "qemu-img"):
        if shutil.which(tool) is None:
            raise DriverError(f"{tool} is not installed (apt-get install mmdebstrap extlinux)")
    if not MBR.is_file():
        raise DriverError(f"{MBR} not found: install extlinux")
    mirrors = mirror_args()
    key = cache_key(mirrors)
    final = out_dir / f"debian-{key}"
    if (final / "manifest.json").is_file() and not rebuild:
        say(f"debian image {key} is cached in {final}")
        return _image(final)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".debian-{key}-"))
    started = time.monotonic()
    try:
        root = work / "root"
        say(f"mmdebstrap {SUITE} from {', '.join(mirrors)}")
        argv = mmdebstrap_argv(root, mirrors, debs or out_dir.parent / DEB_CACHE)
        _run_streaming(argv, say, timeout=1800)
        customize(root)
        say(f"making a {DISK_SIZE_MB} MiB disk (sfdisk, mkfs.ext4 -d, extlinux)")
        make_disk(root, work / "disk.raw", work)
        shutil.rmtree(root)
        say("converting to qcow2")
        run_limited(
            [
                "qemu-img",
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "qcow2",
                str(work / "disk.raw"),
                str(work / "disk.qcow2"),
            ],  # fmt: skip
            COPY_LIMITS,
        )
        (work / "disk.raw").unlink()
        seconds = round(time.monotonic() - started, 1)
        manifest = {"key": key, "suite": SUITE, "mirrors": mirrors, "build_seconds": seconds}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.chmod(work, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.rename(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"debian image {key} built in {seconds:.0f} s: {final}")
    return _image(final)
