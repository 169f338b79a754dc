"""The debian-container builder's pieces, without mmdebstrap: its command line (packages,
the package cache shared with the VM build), the rootfs tar written from a directory (with
cloud-init's configuration) and checked as the API's import checks it, and the seed's name
servers as its init reads them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from nubes.errors import DriverError
from nubes.imagebuild import debian
from nubes.imagebuild import debiancontainer as dc
from nubes.imagebuild.tiny import _file
from nubes.storage.seed import SeedData, SeedNic, render_network_config

MIRROR = "/etc/apt/sources.list.d/debian.sources"
LONG = "usr/share/ca-certificates/mozilla/" + "Some_Root_Certificate_Authority_" * 4 + ".crt"


def test_mmdebstrap_argv_builds_a_slim_root_with_tini_and_sshd(tmp_path: Path) -> None:
    debs = tmp_path / "debs"
    argv = dc.mmdebstrap_argv(tmp_path / "root", [MIRROR], debs)
    assert argv[0] == "mmdebstrap" and argv[-3:] == ["bookworm", str(tmp_path / "root"), MIRROR]
    include = next(a for a in argv if a.startswith("--include=")).split("=", 1)[1].split(",")
    assert {"tini", "cloud-init", "openssh-server", "iproute2", "iputils-ping"} <= set(include)
    # no kernel, bootloader or systemd in a container
    assert not {"linux-image-cloud-amd64", "extlinux", "systemd-sysv"} & set(include)
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    assert "--dpkgopt=path-include=/usr/share/doc/*/copyright" in argv
    assert any("ssh_host_" in a and a.startswith("--customize-hook=rm") for a in argv)
    # the package cache: filled before apt runs, saved before mmdebstrap's cleanup empties it
    sync_in = argv.index(f"--setup-hook=sync-in {debs} /var/cache/apt/archives/")
    sync_out = argv.index(f"--customize-hook=sync-out /var/cache/apt/archives {debs}")
    assert "--skip=essential/unlink" in argv and sync_in < sync_out


def test_the_vm_build_shares_the_package_cache(tmp_path: Path) -> None:
    vm = debian.mmdebstrap_argv(tmp_path / "root", [MIRROR], tmp_path / "debs")
    ct = dc.mmdebstrap_argv(tmp_path / "root", [MIRROR], tmp_path / "debs")
    hooks = [a for a in vm if "sync-" in a]
    assert len(hooks) == 2 and hooks == [a for a in ct if "sync-" in a]
    assert not [a for a in debian.mmdebstrap_argv(tmp_path / "r", [MIRROR]) if "sync-" in a]
    # the VM build's own steps are still there
    assert any("systemctl enable systemd-networkd" in a for a in vm)


def test_cache_key_is_its_own_and_follows_the_mirror(tmp_path: Path) -> None:
    src = tmp_path / "a.sources"
    src.write_text("Suites: bookworm\n")
    key = dc.cache_key([str(src)])
    assert key == dc.cache_key([str(src)]) and key != debian.cache_key([str(src)])
    src.write_text("Suites: bookworm\nURIs: http://other/debian\n")
    assert dc.cache_key([str(src)]) != key


def fake_root(root: Path) -> None:
    """What mmdebstrap leaves that the tar must not carry as is."""
    for d in ("dev/pts", "proc", "sys", "run/lock", "tmp", "etc/pam.d", "usr/bin", "root",
              "var/cache/apt/archives/partial", str(Path(LONG).parent)):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/pam.d/sshd").write_text(
        "@include common-auth\nsession    required     pam_loginuid.so\n@include common-session\n"
    )
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (root / "usr/bin/su").write_bytes(b"\x7fELF su")
    os.chmod(root / "usr/bin/su", 0o4755)
    (root / "usr/bin/perl").write_bytes(b"perl")
    os.link(root / "usr/bin/perl", root / "usr/bin/perl5.36.0")
    (root / LONG).write_text("cert\n")
    # an absolute link to a long path of the image: PAX records in the tar
    (root / "etc/ssl-cert.pem").symlink_to("/" + LONG)
    (root / "etc/mtab").symlink_to("/proc/self/mounts")  # the runtime provides /proc
    (root / "dev/null").write_text("")  # stands for the device nodes mmdebstrap makes
    (root / "tmp/x").write_text("")
    (root / "run/lock/y").write_text("")
    (root / "var/cache/apt/archives/tini_0.19.0-1_amd64.deb").write_bytes(b"deb")


def test_the_rootfs_tar_is_what_the_import_accepts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    fake_root(root)
    dc.customize(root)
    out = tmp_path / "rootfs.tar"
    dc.write_rootfs(root, out)
    dc.check(out)  # the API's own flatten, on the same bytes
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
        image = json.loads(tar.extractfile("image.json").read())  # type: ignore[union-attr]
        pam = tar.extractfile("rootfs/etc/pam.d/sshd").read().decode()  # type: ignore[union-attr]
        init = tar.extractfile(f"rootfs/{dc.INIT}").read()  # type: ignore[union-attr]
        awk = tar.extractfile("rootfs/etc/nubes/seed.awk").read()  # type: ignore[union-attr]
        mid = tar.extractfile("rootfs/etc/machine-id").read()  # type: ignore[union-attr]
        cfg = tar.extractfile("rootfs/etc/cloud/cloud.cfg.d/90-nubes.cfg")
        cloud_cfg = yaml.safe_load(cfg.read())  # type: ignore[union-attr]
    assert image["args"] == ["/usr/bin/tini", "--", "/sbin/nubes-init"]
    assert init == _file("debian-container-init") and members[f"rootfs/{dc.INIT}"].mode == 0o755
    assert awk == _file("tiny-seed.awk")
    assert "pam_loginuid" not in pam and "common-session" in pam
    assert mid == b""  # one per instance, not the build's
    # cloud-init: the seed from the rootfs's files; no network, hostname or default user
    assert cloud_cfg["datasource"]["NoCloud"]["seedfrom"] == "/etc/nubes/seed/"
    assert cloud_cfg["datasource_list"] == ["NoCloud", "None"]
    assert cloud_cfg["network"] == {"config": "disabled"} and cloud_cfg["preserve_hostname"]
    assert cloud_cfg["system_info"]["default_user"]["name"] == "root"
    assert (
        cloud_cfg["disable_root"] is False and "users-groups" not in cloud_cfg["cloud_init_modules"]
    )
    assert "scripts-user" in cloud_cfg["cloud_final_modules"]
    assert "set_hostname" not in cloud_cfg["cloud_init_modules"]
    assert members["rootfs/usr/bin/su"].mode == 0o755  # setuid cleared
    assert members["rootfs/usr/bin/perl5.36.0"].islnk()  # hard links stay links
    assert members[f"rootfs/{LONG}"].isreg() and members["rootfs/etc/ssl-cert.pem"].issym()
    # the runtime's mounts hide these: their directories only; no downloaded packages
    for d in ("dev", "proc", "sys", "run", "tmp"):
        assert members[f"rootfs/{d}"].isdir()
    for gone in ("dev/null", "dev/pts", "tmp/x", "run/lock", "run/lock/y"):
        assert f"rootfs/{gone}" not in members
    assert not [n for n in members if n.endswith(".deb")]
    assert all(m.uname == "" for m in members.values())


def test_a_root_the_import_would_refuse_fails_the_build(tmp_path: Path) -> None:
    root = tmp_path / "root"
    fake_root(root)
    (root / "etc/dangling").symlink_to("/usr/lib/not-in-the-image")
    dc.write_rootfs(root, tmp_path / "rootfs.tar")
    with pytest.raises(DriverError, match="would be refused.*etc/dangling"):
        dc.check(tmp_path / "rootfs.tar")


def test_the_build_is_cached_by_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second build reuses the first's tar without running mmdebstrap; --rebuild does not."""
    runs: list[list[str]] = []

    def fake_mmdebstrap(argv: list[str], say: object, timeout: float) -> None:
        runs.append(argv)
        fake_root(Path(argv[-2]))

    monkeypatch.setattr(debian, "_run_streaming", fake_mmdebstrap)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    said: list[str] = []
    first = dc.build_debian_container(tmp_path / "out", said.append)
    assert first.archive.is_file() and len(runs) == 1
    assert runs[0][runs[0].index("--include=" + ",".join(dc.PACKAGES)) + 1 :][:3] == [
        "--skip=essential/unlink",
        f'--setup-hook=mkdir -p {tmp_path / "debs"} "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {tmp_path / 'debs'} /var/cache/apt/archives/",
    ]
    again = dc.build_debian_container(tmp_path / "out", said.append)
    assert again.archive == first.archive and len(runs) == 1 and "cached" in said[-1]
    dc.build_debian_container(tmp_path / "out", said.append, rebuild=True)
    assert len(runs) == 2
    left = {p.name for p in (tmp_path / "out").iterdir()}
    assert left == {first.archive.name, first.archive.with_suffix(".json").name}  # no work dir


def test_the_init_takes_the_seeds_name_servers(tmp_path: Path) -> None:
    """The init's own awk line on what tiny-seed.awk makes of the agent's network-config."""
    if shutil.which("awk") is None:
        pytest.skip("no awk")
    nic = SeedNic("52:54:00:00:00:01", "10.0.0.5/24", "10.0.0.1", ("10.0.0.1", "10.0.0.2"))
    seed = tmp_path / "network-config"
    seed.write_text(render_network_config(SeedData("i-1", "c1", network=(nic,))))
    out = tmp_path / "out"
    out.mkdir()
    awk = tmp_path / "seed.awk"
    awk.write_bytes(_file("tiny-seed.awk"))
    subprocess.run(["awk", "-v", f"OUT={out}", "-f", str(awk), str(seed)], check=True)
    init = _file("debian-container-init").decode()
    line = next(ln for ln in init.splitlines() if ln.startswith("DNS=$(awk"))
    program = line.split("'")[1]
    dns = subprocess.run(
        ["awk", program, str(out / "nics")], capture_output=True, text=True, check=True
    ).stdout
    assert dns.strip() == "10.0.0.1,10.0.0.2"
