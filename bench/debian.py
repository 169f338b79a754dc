"""Debian guest benchmark: create -> SSH-ready through nubes vs the bare QEMU command of the
same disk and seed, and the image build time. Called from bench/boot.py (`--only debian`).

SSH-ready: the first moment `ssh debian@ADDRESS true` with the instance's key succeeds,
probed from the lab host every half second in both cases.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.conftest import CACHE, LabCloud, start_lab, stop_lab

from bench._common import median, network_bridge, plug_bare_tap, row
from nubes.hypervisor.base import InstanceSpec, NicSpec
from nubes.hypervisor.qemu.accel import host_accel
from nubes.hypervisor.qemu.cmdline import RuntimePaths, build_argv
from nubes.imagebuild.debian import DEFAULT_USER, build_debian
from nubes.schemas import resources as s
from nubes.storage import disks
from nubes.storage.seed import SeedData, SeedNic, write_seed

NET = "10.79.0"


def wait_ssh(
    cloud: LabCloud,
    ip: str,
    key: Path,
    timeout: float = 900,
    proc: subprocess.Popen[bytes] | None = None,
) -> float:
    start = time.perf_counter()
    argv = [
        "ip", "netns", "exec", cloud.host_ns(), "ssh", "-i", str(key),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3",
        "-o", "LogLevel=ERROR", f"{DEFAULT_USER}@{ip}", "true",
    ]  # fmt: skip
    while time.perf_counter() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"QEMU exited ({proc.returncode}) before SSH answered")
        if subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0:
            return time.perf_counter() - start
        time.sleep(0.5)
    raise TimeoutError(f"no SSH to {ip} after {timeout} s")


def nubes_boot(cloud: LabCloud, name: str, key: Path) -> float:
    start = time.perf_counter()
    server = cloud.client.create_server(
        s.ServerCreate(name=name, image="debian", flavor="m1.small", network="bench", key_name="k")
    )
    ip = server.addresses["bench"][0]
    wait_ssh(cloud, ip, key)
    elapsed = time.perf_counter() - start
    cloud.nubes("server", "delete", name, "--wait")
    return elapsed


def bare_boot(cloud: LabCloud, work: Path, index: int, key: Path) -> float:
    """By hand: overlay, the same seed nubes writes, a tap, and the argv nubes would run."""
    image = cloud.client.image("debian")
    cache = cloud.host_dir() / "images"  # the host's own cache, through its mount namespace
    inst = work / f"bare{index}"
    inst.mkdir()
    instance_id = "bare" + secrets.token_hex(6)
    tap = "tapbare" + secrets.token_hex(3)
    mac = f"52:54:00:ee:01:{index:02x}"
    ip = f"{NET}.{200 + index}"
    start = time.perf_counter()
    disks.create_overlay(cache / f"{image.id}.qcow2", "qcow2", inst / "disk.qcow2", 4)
    seed = SeedData(
        instance_id=instance_id,
        hostname=f"bare{index}",
        public_keys=(key.with_suffix(".pub").read_text().strip(),),
        default_user=DEFAULT_USER,
        network=(
            SeedNic(
                mac=mac, address_cidr=f"{ip}/24", gateway=f"{NET}.1", dns=(f"{NET}.1",), mtu=1450
            ),
        ),
    )
    write_seed(seed, inst / "seed.iso")
    # the network's bridge (its gateway host keeps it while the network exists), as the
    # tiny bench does: the same gateway and path for both guests
    bridge = network_bridge(cloud)
    ns = ["ip", "netns", "exec", cloud.host_ns()]
    plug_bare_tap(cloud.host_ns(), tap, bridge)
    spec = InstanceSpec(
        id=instance_id,
        vcpus=1,
        ram_mb=1024,
        disk=inst / "disk.qcow2",
        seed=inst / "seed.iso",
        instance_dir=inst,
        nics=(NicSpec(tap=tap, mac=mac, mtu=1450),),
    )
    argv = build_argv(spec, host_accel().name, "qemu-system-x86_64")
    RuntimePaths(inst).socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (inst / "qemu.log").open("wb") as err:
        proc = subprocess.Popen([*ns, *argv], stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_ssh(cloud, ip, key, proc=proc)
        return time.perf_counter() - start
    finally:
        proc.kill()
        proc.wait()
        subprocess.run([*ns, "ip", "link", "del", tap], check=False)
        subprocess.run(["rm", "-rf", f"/run/nubes/{inst.name}"], check=False)


def bench_build() -> float:
    """A full build from the mirror into a throwaway cache directory."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        start = time.perf_counter()
        build_debian(Path(tmp))
        return time.perf_counter() - start


def cached_build_seconds() -> float | None:
    for manifest in sorted((CACHE / "debian").glob("debian-*/manifest.json")):
        return float(json.loads(manifest.read_text()).get("build_seconds", 0)) or None
    return None


def bench_debian(rounds: int, build: bool) -> None:
    if build:
        print(f"{'debian image build (mmdebstrap -> qcow2)':<44} {bench_build():8.1f} s")
    else:
        seconds = cached_build_seconds()
        if seconds:
            print(f"{'debian image build (cached; as recorded)':<44} {seconds:8.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        cloud = start_lab(Path(tmp), 1)
        cloud.env["HOME"] = tmp  # the generated key lands in tmp/.ssh
        try:
            cloud.nubes("image", "build", "debian", timeout=1800)
            cloud.client.create_network(s.NetworkCreate(name="bench", cidr=f"{NET}.0/24"))
            cloud.nubes("keypair", "create", "k")
            key = Path(tmp) / ".ssh" / "nubes-k"
            subprocess.run(
                ["ssh-keygen", "-y", "-f", str(key)],
                stdout=key.with_suffix(".pub").open("w"),
                check=True,
            )
            ours, bare = [], []
            for i in range(rounds):  # alternate, so drift on a noisy machine hits both
                ours.append(nubes_boot(cloud, f"d{i}", key))
                print(f"  nubes boot {i}: {ours[-1]:.1f} s", flush=True)
                bare.append(bare_boot(cloud, Path(tmp), i, key))
                print(f"  bare boot {i}: {bare[-1]:.1f} s", flush=True)
            print(row("debian: create -> SSH ready (median)", median(ours), median(bare)))
            print(f"{'':<44} goal: ratio <= 1.05")
        finally:
            stop_lab(cloud)
