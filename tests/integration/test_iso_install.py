"""Issue 13 item 5 for real: an installer CD built here (tests/integration/installer.py)
installs onto a server's blank disk in a lab host and powers off; `nubes server eject`, then
`nubes server start`: the installed disk boots and says so, and keeps doing so."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import CACHE, LabCloud, start_lab, stop_lab
from tests.integration.installer import (
    INSTALLED_MARKER,
    INSTALLED_READY,
    INSTALLER_DONE,
    build_installer,
)

pytestmark = pytest.mark.integration

TIMEOUT = 300.0  # generous: other tests emulate guests on the same 2 cores


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabCloud]:
    cloud = start_lab(tmp_path, 1)
    try:
        yield cloud
    finally:
        stop_lab(cloud)


def wait_for(cond: Callable[[], object], what: str, timeout: float = TIMEOUT) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_install_from_an_iso_then_eject_and_boot_the_disk(lab: LabCloud) -> None:
    iso = build_installer(CACHE)
    out = lab.nubes(
        "image", "import", "inst", "--file", str(iso), "--format", "iso",
        "--ready-pattern", INSTALLED_READY,
    )  # fmt: skip
    assert "iso" in out
    lab.nubes("network", "create", "net", "--cidr", "10.41.0.0/24")
    lab.nubes(
        "server", "create", "box", "--image", "inst", "--flavor", "m1.tiny", "--network", "net"
    )
    # box2 ejects by itself: its installer's poweroff ends QEMU, the API ejects, the host
    # starts it again from its disk
    lab.nubes(
        "server", "create", "box2", "--image", "inst", "--flavor", "m1.tiny",
        "--network", "net", "--eject-after-install",
    )  # fmt: skip
    c = lab.client
    assert c.server("box").cdrom

    def log() -> str:
        return c.console_log("box")

    # the installer runs from the CD, writes the disk and powers the guest off
    wait_for(lambda: c.server("box").status == "SHUTOFF", "the installer to power off")
    text = log()
    assert INSTALLER_DONE in text and "FAIL" not in text, text[-3000:]
    assert INSTALLED_MARKER not in text

    out = lab.nubes("server", "eject", "box")
    assert "eject requested" in out
    assert not c.server("box").cdrom
    lab.nubes("server", "start", "box")
    wait_for(lambda: c.server("box").ready_at is not None, "the installed disk to boot")
    text = log()
    assert text.count(INSTALLED_MARKER) == 1, text[-3000:]
    assert text.count("nubes-installer: started") == 1  # the CD is gone: no second install

    # persisted: a stop and a start boot the disk again, never the CD
    lab.nubes("server", "stop", "box", "--wait")
    lab.nubes("server", "start", "box")
    wait_for(lambda: log().count(INSTALLED_MARKER) == 2, "the second boot of the disk")
    assert log().count("nubes-installer: started") == 1
    lab.nubes("server", "delete", "box")

    wait_for(lambda: c.server("box2").ready_at is not None, "box2's disk to boot by itself")
    box2 = c.server("box2")
    text2 = c.console_log("box2")
    assert not box2.cdrom and box2.status == "ACTIVE" and not box2.fault
    assert text2.count("nubes-installer: started") == 1 and INSTALLER_DONE in text2
    assert text2.count(INSTALLED_MARKER) == 1, text2[-3000:]
    lab.nubes("server", "delete", "box2")
