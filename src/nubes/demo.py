"""`make demo`: a one-host lab cloud, two tiny instances, one pings the other.

Every step is a `nubes` command, printed before it runs, so the demo doubles as a tour.
The cloud stays up afterwards; `nubes lab down` removes it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NUBES = [sys.executable, "-m", "nubes.cli"]


def run(*args: str, capture: bool = False) -> str:
    print(f"\n$ nubes {' '.join(args)}", flush=True)
    result = subprocess.run([*NUBES, *args], text=True, capture_output=capture)
    if result.returncode != 0:
        if capture:
            sys.stderr.write(result.stderr)
        raise SystemExit(f"demo step failed: nubes {' '.join(args)}")
    if capture:
        return result.stdout
    return ""


def wait_console(name: str, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([*NUBES, "console", "log", name], text=True, capture_output=True)
        if re.search(pattern, out.stdout):
            return out.stdout
        time.sleep(1)
    raise SystemExit(f"demo: {name}'s console never showed {pattern!r}")


def main() -> None:
    started = time.monotonic()
    run("lab", "down")
    run("lab", "up", "--hosts", "1")
    run("host", "list")
    run("image", "build", "tiny")
    run("network", "create", "demo-net", "--cidr", "10.20.0.0/24")
    run("keypair", "create", "demo")
    alpha = json.loads(
        run(
            "server",
            "create",
            "alpha",
            "--image",
            "tiny",
            "--network",
            "demo-net",
            "--key",
            "demo",
            "--wait",
            "-o",
            "json",
            capture=True,
        )
    )
    alpha_ip = alpha["addresses"]["demo-net"][0]
    print(f"alpha is ACTIVE at {alpha_ip}")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(f"#!/bin/sh\necho pinging alpha\nping -c 3 {alpha_ip}\n")
        script = fh.name
    run(
        "server",
        "create",
        "beta",
        "--image",
        "tiny",
        "--network",
        "demo-net",
        "--key",
        "demo",
        "--user-data",
        script,
        "--wait",
    )
    Path(script).unlink()
    log = wait_console("beta", r"[1-9] packets received")
    print("\n".join(line for line in log.splitlines() if "nubes-tiny" in line or "packets" in line))
    run("server", "list")
    print(
        f"\nDemo done in {time.monotonic() - started:.0f} s: two instances on one network, "
        "beta pinged alpha.\nThe cloud is still running. Try `nubes server list`, "
        "`nubes console log alpha`, `nubes console alpha`.\nRemove everything with "
        "`nubes lab down`."
    )


if __name__ == "__main__":
    main()
