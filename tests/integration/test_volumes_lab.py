"""Issue 13 items 2-4 on a 1-host lab with real QEMU tiny guests: a volume written in one guest
and read in another, a snapshot that boots with its data, rebuild and resize as the guest sees
them. Commands run in the guests over their serial consoles (through the API and the agent)."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator

import pytest
from websockets.sync.client import ClientConnection, unix_connect

from nubes.schemas import resources as s
from tests.integration.conftest import LabCloud, start_lab, stop_lab

pytestmark = pytest.mark.integration
TIMEOUT = 300.0  # generous: other tests emulate guests on the same 2 cores


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path_factory.mktemp("volumes"), 1)
    try:
        cloud.nubes("image", "build", "tiny")
        cloud.nubes("network", "create", "net", "--cidr", "10.61.0.0/24")
        cloud.nubes("flavor", "create", "t.one", "--vcpus", "1", "--ram", "160", "--disk", "1")
        cloud.nubes("flavor", "create", "t.two", "--vcpus", "2", "--ram", "288", "--disk", "2")
        yield cloud
    finally:
        stop_lab(cloud)


def _websocket(cloud: LabCloud, path: str) -> ClientConnection:
    token = json.loads((cloud.state_dir / "client.json").read_text())["token"]
    return unix_connect(
        str(cloud.state_dir / "api.sock"),
        f"ws://nubes{path}",
        additional_headers={"Authorization": f"Bearer {token}"},
    )


def in_guest(cloud: LabCloud, server: str, command: str, timeout: float = TIMEOUT) -> str:
    """Run a shell command on the guest's serial console; its output. The end marker is
    computed by the guest's shell, so the echoed command line never matches it."""
    tag = secrets.token_hex(3)
    sid = cloud.client.server(server).id
    with _websocket(cloud, f"/v1/servers/{sid}/console") as ws:
        ws.send(f"\n{command}; echo END-$((6*7))-{tag}\n".encode())
        seen = b""
        needle = f"END-42-{tag}".encode()
        deadline = time.monotonic() + timeout
        while needle not in seen and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                seen += ws.recv(timeout=2)  # type: ignore[operator]
    text = seen.decode(errors="replace")
    assert needle.decode() in text, f"{server}: {command!r} did not finish:\n{text[-2000:]}"
    return text.split(needle.decode())[0]


def create(cloud: LabCloud, name: str, image: str = "tiny", flavor: str = "t.one") -> s.Server:
    cloud.nubes(
        "server", "create", name, "--image", image, "--flavor", flavor, "--network", "net",
        "--wait", "--timeout", str(TIMEOUT), timeout=TIMEOUT + 60,
    )  # fmt: skip
    return cloud.client.server(name)


def wait_volume(cloud: LabCloud, name: str, status: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        vol = cloud.client.volume(name)
        assert vol.status != "error", vol.fault
        if vol.status == status:
            return
        time.sleep(1)
    raise AssertionError(f"volume {name} never became {status}: {cloud.client.volume(name)}")


def wait_server(cloud: LabCloud, name: str) -> s.Server:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        server = cloud.client.server(name)
        assert server.status != "ERROR", server.fault
        if server.status == "ACTIVE" and not server.task_state and server.ready_at:
            return server
        time.sleep(1)
    raise AssertionError(f"{name} never came back: {cloud.client.server(name)}")


def test_a_volume_written_in_one_guest_is_read_in_another(lab: LabCloud) -> None:
    create(lab, "writer")
    create(lab, "reader")
    lab.nubes("volume", "create", "data", "--size", "1")
    wait_volume(lab, "data", "available")
    vol = lab.client.volume("data")
    lab.nubes("server", "add-volume", "writer", "data")
    wait_volume(lab, "data", "in-use")
    payload = f"nubes-volume-{secrets.token_hex(4)}"
    out = in_guest(
        lab,
        "writer",
        "while [ ! -b /dev/vdc ]; do sleep 1; done; cat /sys/block/vdc/serial; echo; "
        f"echo {payload} | dd of=/dev/vdc conv=fsync 2>/dev/null; sync",
    )
    assert vol.id[:20] in out, out  # the disk the guest sees is this volume
    lab.nubes("server", "remove-volume", "writer", "data")
    wait_volume(lab, "data", "available")
    out = in_guest(lab, "writer", "[ -b /dev/vdc ] && echo STILL-$((1+1)) || echo GONE-$((2+2))")
    assert "GONE-4" in out, out  # the guest let go of it
    lab.nubes("server", "add-volume", "reader", "data")
    wait_volume(lab, "data", "in-use")
    out = in_guest(
        lab, "reader", "while [ ! -b /dev/vdc ]; do sleep 1; done; head -c 64 /dev/vdc | head -1"
    )
    assert payload in out.split("head -1", 1)[-1], out
    # deleting the server keeps the volume, detached
    lab.nubes("server", "delete", "reader", "--wait", timeout=TIMEOUT)
    wait_volume(lab, "data", "available")
    assert lab.client.volume("data").server is None
    lab.nubes("volume", "delete", "data")
    deadline = time.monotonic() + TIMEOUT
    while lab.client.volumes() and time.monotonic() < deadline:
        time.sleep(1)
    assert lab.client.volumes() == []
    assert list((lab.host_dir() / "volumes").glob("*.qcow2")) == []
    lab.nubes("server", "delete", "writer", "--wait", timeout=TIMEOUT)


def test_a_snapshot_boots_as_a_new_server_with_its_data(lab: LabCloud) -> None:
    create(lab, "origin")
    payload = f"nubes-snap-{secrets.token_hex(4)}"
    in_guest(lab, "origin", f"echo {payload} > /data/marker; sync")
    lab.nubes("server", "snapshot", "origin", "--name", "origin-snap")
    deadline = time.monotonic() + TIMEOUT
    while lab.client.image("origin-snap").status == "queued" and time.monotonic() < deadline:
        time.sleep(1)
    image = lab.client.image("origin-snap")
    assert image.status == "active", image.error
    assert image.disk_format == "qcow2"
    # the origin runs on, unharmed by the pause
    assert "ok-42" in in_guest(lab, "origin", "echo ok-$((6*7))").replace("$((6*7))", "")
    create(lab, "copy", image="origin-snap")
    out = in_guest(lab, "copy", "cat /data/marker")
    assert payload in out.split("cat /data/marker", 1)[-1], out
    for name in ("copy", "origin"):
        lab.nubes("server", "delete", name, "--wait", timeout=TIMEOUT)


def test_rebuild_keeps_addresses_and_changes_the_instance_id(lab: LabCloud) -> None:
    before = create(lab, "rebuilt")
    iid = "cat /run/seed/instance-id"
    assert before.id in in_guest(lab, "rebuilt", iid)
    in_guest(lab, "rebuilt", "echo old > /data/old-disk; sync")
    lab.nubes("server", "rebuild", "rebuilt")
    after = wait_server(lab, "rebuilt")
    assert after.id == before.id and after.addresses == before.addresses
    assert after.nics == before.nics
    out = in_guest(lab, "rebuilt", f"{iid}; ls /data/old-disk 2>&1")
    assert f"{before.id}.r1" in out, out
    assert "No such file" in out, out  # a new disk
    ip = before.addresses["net"][0]
    assert f"address {ip}/24" in lab.client.console_log("rebuilt")
    lab.nubes("server", "delete", "rebuilt", "--wait", timeout=TIMEOUT)


def test_resize_changes_the_vcpus_and_ram_the_guest_sees(lab: LabCloud) -> None:
    create(lab, "grown", flavor="t.one")
    probe = "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo"
    small = in_guest(lab, "grown", probe)
    out = lab.nubes("server", "resize", "grown", "--flavor", "t.one", check=False)
    assert "already has flavor" in out
    lab.nubes("server", "resize", "grown", "--flavor", "t.two")
    after = wait_server(lab, "grown")
    assert after.flavor == "t.two"
    big = in_guest(lab, "grown", probe)
    cpus = [int(line) for line in big.splitlines() if line.strip().isdigit()]
    assert cpus and cpus[-1] == 2, big
    mem_small = int(small.rsplit("MemTotal:", 1)[1].split()[0])
    mem_big = int(big.rsplit("MemTotal:", 1)[1].split()[0])
    assert mem_big > mem_small + 100 * 1024, (small, big)  # kB: 288 MiB vs 160 MiB
    out = lab.nubes("server", "resize", "grown", "--flavor", "t.one", check=False)
    assert "cannot shrink" in out
    lab.nubes("server", "delete", "grown", "--wait", timeout=TIMEOUT)
