"""The metadata service answers instances on other hosts of the network too (through the
overlay to the gateway's host), each with its own data. Tiny guests, a 2-host lab."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.integration.conftest import LabCloud, start_lab, stop_lab

pytestmark = pytest.mark.integration

# busybox-static's wget crashes on this machine; its nc does plain HTTP/1.0 well
SCRIPT = r"""#!/bin/sh
get() {
  printf 'GET %s HTTP/1.0\r\n\r\n' "$1" | nc 169.254.169.254 80 | sed '1,/^\r*$/d'
}
for i in 1 2 3 4 5; do
  id=$(get /latest/meta-data/instance-id) && [ -n "$id" ] && break
  sleep 1
done
echo "META-ID:$id"
echo "META-NAME:$(get /openstack/latest/meta_data.json | sed -n 's/.*"name": "\([^"]*\)".*/\1/p')"
"""


def wait_console(cloud: LabCloud, name: str, pattern: str, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        log = cloud.client.console_log(name)
        if re.search(pattern, log):
            return log
        time.sleep(1)
    raise AssertionError(f"{name}: console never showed {pattern!r}:\n{log[-3000:]}")


@pytest.fixture
def lab2(tmp_path: Path) -> LabCloud:
    cloud = start_lab(tmp_path, 2)
    yield cloud  # type: ignore[misc]
    stop_lab(cloud)


def test_metadata_for_instances_on_the_gateway_host_and_elsewhere(
    lab2: LabCloud, tmp_path: Path
) -> None:
    cloud = lab2
    cloud.nubes("image", "build", "tiny")
    cloud.nubes("network", "create", "net1", "--cidr", "10.31.0.0/24")
    script = tmp_path / "ud.sh"
    script.write_text(SCRIPT)
    common = ["--image", "tiny", "--network", "net1", "--user-data", str(script)]
    cloud.nubes("server", "create", "near", *common, "--host", cloud.host_ns(1), "--wait")
    cloud.nubes("server", "create", "far", *common, "--host", cloud.host_ns(2), "--wait")
    near, far = cloud.client.server("near"), cloud.client.server("far")
    assert (near.host, far.host) == (cloud.host_ns(1), cloud.host_ns(2))
    gateway_host = cloud.client.network("net1").gateway_host
    assert gateway_host in (cloud.host_ns(1), cloud.host_ns(2))
    for server in (near, far):
        log = wait_console(cloud, server.name, r"META-NAME:\S*")
        assert f"META-ID:{server.id}" in log, log[-2000:]
        assert f"META-NAME:{server.name}\n" in log.replace("\r", ""), log[-2000:]
