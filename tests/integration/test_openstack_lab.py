"""The real `openstack` CLI against a lab cloud: a real tiny guest created, seen booted on its
console, stopped, started and deleted through the OpenStack API, as a user of a real cloud
drives it (the functional tests run the same clients on fake drivers)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import LabCloud
from tests.openstack_env import OpenStackCli


def clouds_yaml(cloud: LabCloud, path: Path) -> Path:
    """What `nubes openstack clouds-yaml` prints, as the lab's admin runs it."""
    made = subprocess.run(
        [sys.executable, "-m", "nubes.cli", "openstack", "clouds-yaml"],
        env=cloud.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    path.write_text(made.stdout)
    return path


def wait_status(cli: OpenStackCli, name: str, status: str, timeout: float = 180) -> object:
    deadline = time.monotonic() + timeout
    while True:
        shown = cli.run("server", "show", name)
        if shown["status"] == status or time.monotonic() > deadline:
            assert shown["status"] == status, shown
            return shown
        time.sleep(1)


def test_the_openstack_cli_drives_a_real_guest(lab1: LabCloud, tmp_path: Path) -> None:
    cloud = lab1
    cloud.nubes("image", "build", "tiny")
    cloud.nubes("network", "create", "net", "--cidr", "10.41.0.0/24")
    cli = OpenStackCli(clouds_yaml(cloud, tmp_path / "clouds.yaml"))

    made = cli.run(
        "server", "create", "--image", "tiny", "--flavor", "m1.tiny", "--network", "net",
        "--wait", "os1",
    )  # fmt: skip
    assert made["status"] == "ACTIVE", made
    assert "10.41.0." in str(made["addresses"]), made
    deadline = time.monotonic() + 180
    log = ""
    while "nubes-tiny: ready" not in log:  # the guest booted, as its console says
        assert time.monotonic() < deadline, f"never ready:\n{log[-3000:]}"
        time.sleep(2)
        log = cli.run("console", "log", "show", "os1", fmt=False)
    assert "nubes-tiny: hostname os1" in log
    # the same server through nubes' own API
    assert [s.name for s in cloud.client.servers()] == ["os1"]

    cli.run("server", "stop", "os1", fmt=False)
    wait_status(cli, "os1", "SHUTOFF")
    cli.run("server", "start", "os1", fmt=False)
    wait_status(cli, "os1", "ACTIVE")
    cli.run("server", "delete", "--wait", "os1", fmt=False)
    assert cli.run("server", "list") == []
    assert cloud.client.servers() == []
