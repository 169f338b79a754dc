"""The debian image builder's pure parts: mirror discovery, cache key, bootloader config."""

from __future__ import annotations

from pathlib import Path

from nubes.imagebuild import debian


def write_sources(apt: Path, name: str, text: str) -> None:
    (apt / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list.d" / name).write_text(text)


def test_mirror_is_the_machines_bookworm_sources(tmp_path: Path) -> None:
    write_sources(
        tmp_path,
        "debian.sources",
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n",
    )
    write_sources(tmp_path, "other.sources", "Types: deb\nURIs: http://x/y\nSuites: nodistro\n")
    write_sources(tmp_path, "old.list.disabled", "deb http://z bookworm main\n")
    assert debian.mirror_args(tmp_path) == [str(tmp_path / "sources.list.d" / "debian.sources")]


def test_mirror_falls_back_to_sources_list_then_debian(tmp_path: Path) -> None:
    assert debian.mirror_args(tmp_path) == [debian.FALLBACK_MIRROR]
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian bookworm main\n")
    assert debian.mirror_args(tmp_path) == [str(tmp_path / "sources.list")]


def test_cache_key_follows_the_mirror_config(tmp_path: Path) -> None:
    src = tmp_path / "a.sources"
    src.write_text("Suites: bookworm\n")
    key = debian.cache_key([str(src)])
    assert key == debian.cache_key([str(src)]) and len(key) == 16
    src.write_text("Suites: bookworm\nURIs: http://other/debian\n")
    assert debian.cache_key([str(src)]) != key


def test_mmdebstrap_argv_installs_what_a_cloud_guest_needs(tmp_path: Path) -> None:
    argv = debian.mmdebstrap_argv(tmp_path / "root", ["/etc/apt/sources.list.d/debian.sources"])
    assert argv[0] == "mmdebstrap" and argv[-3:] == [
        "bookworm",
        str(tmp_path / "root"),
        "/etc/apt/sources.list.d/debian.sources",
    ]
    include = next(a for a in argv if a.startswith("--include=")).split("=", 1)[1].split(",")
    for pkg in ("cloud-init", "openssh-server", "linux-image-cloud-amd64", "extlinux", "sudo"):
        assert pkg in include
    # host keys made at build time would be shared by every instance
    assert any("ssh_host_" in a and a.startswith("--customize-hook=rm") for a in argv)


def test_bootloader_and_cloud_init_config() -> None:
    conf = debian.extlinux_conf("vmlinuz-6.1.0-1-cloud-amd64", "initrd.img-6.1.0-1-cloud-amd64")
    assert "LINUX /boot/vmlinuz-6.1.0-1-cloud-amd64\n" in conf
    assert "INITRD /boot/initrd.img-6.1.0-1-cloud-amd64\n" in conf
    assert f"root=LABEL={debian.ROOT_LABEL}" in conf and "console=ttyS0" in conf
    cfg = debian._FILES["etc/cloud/cloud.cfg.d/90-nubes.cfg"]
    assert debian.READY_LINE in cfg and "datasource_list: [ NoCloud" in cfg
    assert " - ssh\n" in cfg and " - final-message\n" in cfg and " - locale\n" not in cfg
