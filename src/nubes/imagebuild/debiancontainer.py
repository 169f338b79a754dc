"""The debian-container image: Debian 12 as a container (runc) rootfs, in storage/rootfs.py's
format (`image.json` + `rootfs/`), from the same mmdebstrap, mirror and package cache as the
debian VM image, with no kernel, bootloader or systemd.

Its init is tini (PID 1: reaps orphans, forwards runc's SIGTERM) running a shell script that
runs cloud-init's four stages as systemd would in a VM (~1.5 s here), with NoCloud reading the
seed the agent writes into the rootfs (`seedfrom`), and does what cloud-init leaves to parts a
container lacks: hostname files, name servers (with the tiny images' seed parser). It then
starts sshd and prints a ready line.

The tar is written from the mmdebstrap directory by `tarfile` (uids as built, no device nodes,
nothing under the runtime's own mounts, setuid/setgid bits cleared: no_new_privileges makes
them useless and the import refuses them), checked as the API's import will check it, and
cached by its inputs like the VM build.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nubes.errors import DriverError, ImageRejected
from nubes.imagebuild import debian
from nubes.imagebuild.tiny import _file
from nubes.storage.rootfs import RUNTIME_DIRS, Limits, Process, flatten

BUILDER_VERSION = "1"  # bump when the build changes in ways the inputs do not show
READY_LINE = "nubes-debian-container: ready"
DEFAULT_USER = ""  # no user made: the seed's SSH keys go to root (sudo cannot work here)
INIT = "sbin/nubes-init"
PROCESS = Process(
    ["/usr/bin/tini", "--", f"/{INIT}"],
    ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
)
PACKAGES = (
    "tini",
    "cloud-init",
    "mawk",  # the seed parser (minbase has it; named because the init needs it)
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "procps",
    "ca-certificates",
)
CLOUD_INIT_MODULES = ("seed_random", "bootcmd", "write-files", "ca-certs", "ssh")
CLOUD_CONFIG_MODULES = ("runcmd",)
CLOUD_FINAL_MODULES = (
    "package-update-upgrade-install", "write-files-deferred", "scripts-vendor",
    "scripts-per-once", "scripts-per-boot", "scripts-per-instance", "scripts-user",
    "ssh-authkey-fingerprints", "final-message",
)  # fmt: skip
_FILES = {
    # The seed is files in the rootfs, not a labelled disk: NoCloud's seedfrom names them.
    # Off: the network (the host configures the NICs; no CAP_NET_ADMIN here), the hostname
    # (runc sets it; no CAP_SYS_ADMIN), disks, locales, and the default user (its sudo cannot
    # work under no_new_privileges): the keys go to root.
    "etc/cloud/cloud.cfg.d/90-nubes.cfg": (
        "datasource_list: [ NoCloud, None ]\n"
        "datasource:\n  NoCloud:\n    seedfrom: /etc/nubes/seed/\n"
        "network: {config: disabled}\n"
        "preserve_hostname: true\n"
        "disable_root: false\n"
        # no user made (no users-groups module): the default user is root, whom the keys reach
        "system_info:\n  default_user:\n    name: root\n"
        "ssh_genkeytypes: [ed25519, ecdsa, rsa]\n"
        + debian._module_list("cloud_init_modules", CLOUD_INIT_MODULES)
        + debian._module_list("cloud_config_modules", CLOUD_CONFIG_MODULES)
        + debian._module_list("cloud_final_modules", CLOUD_FINAL_MODULES)
    ),
    "etc/hostname": "debian\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    # no keys but the seed's; root logs in only with them (Debian's default for root)
    "etc/ssh/sshd_config.d/nubes.conf": "PasswordAuthentication no\nUsePAM yes\n",
}
MAX_BYTES = 1 << 30  # what the build may hold: far above Debian's ~150 MiB

Progress = debian.Progress


@dataclass(frozen=True)
class BuiltContainer:
    archive: Path  # the rootfs tar, ready for `nubes image import --format rootfs`
    build_seconds: float


def _scripts() -> dict[str, bytes]:
    return {
        INIT: _file("debian-container-init"),
        "etc/nubes/seed.awk": _file("tiny-seed.awk"),
    }


def cache_key(mirrors: list[str]) -> str:
    h = hashlib.sha256(f"{BUILDER_VERSION}\0{debian.SUITE}\0container\n".encode())
    h.update("\0".join(PACKAGES).encode())
    h.update(json.dumps(_FILES, sort_keys=True).encode())
    h.update(PROCESS.to_json() + "\0".join(SLIM).encode())
    for name, data in sorted(_scripts().items()):
        h.update(name.encode() + b"\0" + data)
    for m in mirrors:
        path = Path(m)
        h.update(path.read_bytes() if path.is_file() else m.encode())
    return h.hexdigest()[:16]


# dpkg leaves out what a server in a container never reads (~45 of ~150 MiB), as Debian's
# own slim container images do; the licences stay
SLIM = (
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)


def mmdebstrap_argv(root: Path, mirrors: list[str], debs: Path | None = None) -> list[str]:
    options = [f"--dpkgopt={x}" for x in SLIM]
    return debian.mmdebstrap_command(root, mirrors, PACKAGES, options, debs)


def customize(root: Path) -> None:
    """Our files and init; sshd's PAM session without the audit login uid a user namespace
    cannot set (pam_loginuid fails every login there)."""
    for rel, text in _FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o644)
    for rel, data in _scripts().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o755 if rel == INIT else 0o644)
    pam = root / "etc/pam.d/sshd"
    if pam.is_file():
        lines = pam.read_text().splitlines(keepends=True)
        pam.write_text("".join(ln for ln in lines if "pam_loginuid.so" not in ln))
    machine_id = root / "etc/machine-id"
    if machine_id.exists():
        machine_id.write_text("")


def _skipped(rel: str) -> bool:
    """What stays out of the image: the runtime mounts its own /dev, /proc, /sys, /run and
    /tmp over these, and apt's downloads are in the shared package cache."""
    top, _, rest = rel.partition("/")
    if top in RUNTIME_DIRS and rest:
        return True
    return rel.startswith("var/cache/apt/archives/") and rel != "var/cache/apt/archives/partial"


def _member(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    rel = info.name.removeprefix("rootfs").lstrip("/")
    if (
        _skipped(rel)
        or info.ischr()
        or info.isblk()
        or not (info.isreg() or info.isdir() or info.issym() or info.islnk() or info.isfifo())
    ):
        return None
    if not info.isdir():
        info.mode &= ~0o6000
    info.uname = info.gname = ""  # the numbers are what the image means, not the host's names
    return info


def write_rootfs(root: Path, out: Path) -> None:
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = PROCESS.to_json()
        info = tarfile.TarInfo("image.json")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
        tar.add(root, arcname="rootfs", filter=_member)  # sorted, hard links kept


def check(archive: Path) -> None:
    """What the API's import will do to the archive, here, so a bad build fails with its
    reason before any upload."""
    try:
        with open(os.devnull, "wb") as sink:
            flatten(archive, "rootfs", sink, Limits(MAX_BYTES))
    except ImageRejected as exc:
        raise DriverError(f"the built rootfs would be refused: {exc}") from exc


def _built(final: Path) -> BuiltContainer:
    manifest = json.loads(final.with_suffix(".json").read_text())
    return BuiltContainer(final, float(manifest.get("build_seconds", 0)))


def build_debian_container(
    out_dir: Path,
    progress: Progress | None = None,
    rebuild: bool = False,
    debs: Path | None = None,
) -> BuiltContainer:
    """Build (or reuse the cached build of) the rootfs tar under out_dir, with the package
    cache debs (default: the VM build's, `debs` beside out_dir). Raises DriverError."""
    say = progress or (lambda _msg: None)
    if shutil.which("mmdebstrap") is None:
        raise DriverError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    mirrors = debian.mirror_args()
    key = cache_key(mirrors)
    final = out_dir / f"debian-container-{key}.tar"
    if final.is_file() and final.with_suffix(".json").is_file() and not rebuild:
        say(f"debian-container image {key} is cached in {final}")
        return _built(final)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".debian-container-{key}-"))
    started = time.monotonic()
    try:
        root = work / "root"
        say(f"mmdebstrap {debian.SUITE} from {', '.join(mirrors)}")
        argv = mmdebstrap_argv(root, mirrors, debs or out_dir.parent / debian.DEB_CACHE)
        debian._run_streaming(argv, say, timeout=1800)
        customize(root)
        say("writing the rootfs tar")
        write_rootfs(root, work / "rootfs.tar")
        shutil.rmtree(root)
        say("checking it as the API's import will")
        check(work / "rootfs.tar")
        seconds = round(time.monotonic() - started, 1)
        manifest = {"key": key, "suite": debian.SUITE, "mirrors": mirrors, "build_seconds": seconds}
        os.chmod(work / "rootfs.tar", 0o644)
        os.replace(work / "rootfs.tar", final)
        # last: a tar without its manifest is not a cached build
        final.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"debian-container image {key} built in {seconds:.0f} s: {final}")
    return _built(final)
