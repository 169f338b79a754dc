"""NoCloud seed contents: what cloud-init (and the tiny image's awk) will read."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest
import yaml

from nubes.errors import InvalidInput
from nubes.storage.seed import (
    SeedData,
    SeedNic,
    build_seed_iso,
    render_meta_data,
    render_network_config,
    render_user_data,
    sanitize_hostname,
    write_seed,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 alice@laptop"
LONG_KEY = "ssh-rsa " + "A" * 700 + "== bob@desk"
NIC = SeedNic("52:54:00:12:34:56", "10.20.0.5/24", "10.20.0.1", ("10.20.0.1", "9.9.9.9"), 1450)


def seed(**kw: object) -> SeedData:
    base: dict[str, object] = {
        "instance_id": "i-0123",
        "hostname": "web1",
        "public_keys": (KEY,),
        "network": (NIC,),
    }
    base.update(kw)
    return SeedData(**base)  # type: ignore[arg-type]


def cloud_config(text: str) -> dict[str, object]:
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def test_meta_data_has_id_hostname_and_keys_on_one_line_each() -> None:
    text = render_meta_data(seed(public_keys=(KEY, LONG_KEY)))
    assert yaml.safe_load(text) == {
        "instance-id": "i-0123",
        "local-hostname": "web1",
        "public-keys": [KEY, LONG_KEY],
    }
    assert f"- {LONG_KEY}\n" in text  # never folded: the tiny image reads it line by line


def test_user_data_without_user_text_is_our_cloud_config() -> None:
    doc = cloud_config(render_user_data(seed(default_user="debian")))
    assert doc["hostname"] == "web1"
    assert doc["ssh_authorized_keys"] == [KEY]
    assert doc["user"] == {
        "name": "debian",
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
    }
    assert doc["users"] == ["default"]


def test_user_cloud_config_is_merged_without_losing_theirs() -> None:
    theirs = (
        "#cloud-config\n"
        "packages: [nginx]\n"
        "runcmd:\n  - echo hi\n"
        "ssh_authorized_keys: [ssh-rsa THEIRS carol]\n"
        "hostname: chosen-by-user\n"
        "users: [{name: carol}]\n"
    )
    doc = cloud_config(render_user_data(seed(user_data=theirs, default_user="debian")))
    assert doc["packages"] == ["nginx"]
    assert doc["runcmd"] == ["echo hi"]
    assert doc["ssh_authorized_keys"] == ["ssh-rsa THEIRS carol", KEY]
    assert doc["hostname"] == "chosen-by-user"  # their choice wins
    assert doc["users"] == [{"name": "carol"}]
    assert "user" not in doc  # they manage users themselves


def test_user_cloud_config_gets_our_hostname_and_keys_when_missing() -> None:
    doc = cloud_config(render_user_data(seed(user_data="#cloud-config\npackages: [htop]\n")))
    assert doc == {"packages": ["htop"], "ssh_authorized_keys": [KEY], "hostname": "web1"}


def test_empty_cloud_config_is_accepted() -> None:
    doc = cloud_config(render_user_data(seed(user_data="#cloud-config\n")))
    assert doc["hostname"] == "web1"


@pytest.mark.parametrize(
    "text",
    [
        "#!/bin/sh\necho hello > /tmp/x\n",
        "#include\nhttps://example.com/cc\n",
        "#cloud-boothook\n#!/bin/sh\necho boot\n",
        'Content-Type: multipart/mixed; boundary="b"\nMIME-Version: 1.0\n\n--b--\n',
    ],
)
def test_other_user_data_passes_through_unchanged(text: str) -> None:
    assert render_user_data(seed(user_data=text)) == text
    assert KEY in render_meta_data(seed(user_data=text))  # keys still reach the guest


@pytest.mark.parametrize("text", ["#cloud-config\n: : [\n", "#cloud-config\n- a\n- b\n"])
def test_bad_cloud_config_is_rejected(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        render_user_data(seed(user_data=text))
    assert err.value.field == "user_data"


def test_network_config_matches_mac_with_static_address() -> None:
    doc = yaml.safe_load(render_network_config(seed()))
    assert doc == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": "52:54:00:12:34:56"},
                "set-name": "eth0",
                "dhcp4": False,
                "addresses": ["10.20.0.5/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "10.20.0.1"}],
                "nameservers": {"addresses": ["10.20.0.1", "9.9.9.9"]},
                "mtu": 1450,
            }
        },
    }


def test_network_config_dhcp_nic_and_order() -> None:
    nics = (NIC, SeedNic("52:54:00:AB:CD:EF"))
    doc = yaml.safe_load(render_network_config(seed(network=nics)))
    assert list(doc["ethernets"]) == ["eth0", "eth1"]
    assert doc["ethernets"]["eth1"] == {
        "match": {"macaddress": "52:54:00:ab:cd:ef"},
        "set-name": "eth1",
        "dhcp4": True,
    }


def test_network_config_mac_survives_yaml_11_sexagesimal() -> None:
    # 52:54:00:12:34:56 is a base-60 integer to YAML 1.1 unless quoted
    text = render_network_config(seed())
    assert "'52:54:00:12:34:56'" in text
    assert isinstance(yaml.safe_load(text)["ethernets"]["eth0"]["match"]["macaddress"], str)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"public_keys": ("ssh-rsa A\nssh-rsa B",)}, "key"),
        ({"network": (SeedNic("nope"),)}, "mac"),
        ({"network": (SeedNic("52:54:00:12:34:56", "10.0.0.300/24"),)}, "network"),
        ({"default_user": "Root User"}, "default_user"),
        ({"user_data": "x" * 70000}, "user_data"),
    ],
)
def test_invalid_seed_input_is_rejected(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        render_meta_data(seed(**kw))
    assert err.value.field == field


def test_user_names_become_valid_hostnames() -> None:
    assert sanitize_hostname("My VM_1!") == "my-vm-1"
    assert sanitize_hostname("___") == "instance"
    doc = yaml.safe_load(render_meta_data(seed(hostname="Web Server #2")))
    assert doc["local-hostname"] == "web-server-2"


def _read_iso(data: bytes) -> tuple[str, dict[str, str]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for name in ("meta-data", "user-data", "network-config"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            files[name] = out.getvalue().decode()
            joliet = io.BytesIO()
            iso.get_file_from_iso_fp(joliet, joliet_path="/" + name)
            assert joliet.getvalue() == out.getvalue()
    finally:
        iso.close()
    return label, files


def test_iso_is_labelled_cidata_with_the_three_files() -> None:
    data = seed(user_data="#!/bin/sh\necho hi\n")
    label, files = _read_iso(build_seed_iso(data))
    assert label == "cidata"
    assert files == {
        "meta-data": render_meta_data(data),
        "user-data": "#!/bin/sh\necho hi\n",
        "network-config": render_network_config(data),
    }


def test_write_seed_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    dest.write_bytes(b"old")
    write_seed(seed(), dest)
    assert _read_iso(dest.read_bytes())[0] == "cidata"
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]
    with pytest.raises(InvalidInput):
        write_seed(seed(public_keys=("a\nb",)), dest)
    assert _read_iso(dest.read_bytes())[0] == "cidata"  # the old seed is intact
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]
