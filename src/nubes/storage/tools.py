"""Run host tools (qemu-img, mkfs) as argv lists, under resource limits and a wall-clock timeout.

Limits are applied by util-linux `prlimit` rather than `resource.setrlimit` in a preexec_fn:
preexec_fn runs Python code between fork and exec, which can deadlock when other threads (the
API's upload workers) hold locks at fork time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from nubes.errors import DriverError

GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    address_space: int  # bytes of virtual memory
    cpu_seconds: int
    timeout: float  # wall clock; the child is killed after it


# What OpenStack found enough for `qemu-img info` on any sane image, and what stops a crafted
# one (huge L1 table, endless snapshot list) from eating the host.
INSPECT_LIMITS = Limits(address_space=1 * GiB, cpu_seconds=30, timeout=60.0)
# Full copies of large images legitimately take CPU time; memory stays bounded. Copies run
# worker threads (8 MiB of stack each, reserved not used), hence more room than inspection.
COPY_LIMITS = Limits(address_space=2 * GiB, cpu_seconds=3600, timeout=3600.0)

# glibc gives each thread its own malloc arena, reserving 64 MiB of address space apiece (up to
# 8 per core): a multi-threaded qemu-img convert then hit the address-space limit at random and
# aborted (1 in 2 runs under 256 MiB; once in CI under 1 GiB). Two arenas make the reservation
# small and steady without changing what the limit bounds: memory actually used.
_TOOL_ENV = {"LC_ALL": "C", "MALLOC_ARENA_MAX": "2"}


class ToolError(DriverError):
    """A host tool failed, was killed by its limits, or timed out."""

    def __init__(self, message: str, *, returncode: int | None, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def _prlimit() -> str:
    path = shutil.which("prlimit")
    if path is None:  # never fall back to running untrusted input unlimited
        raise DriverError("prlimit (util-linux) is not installed; refusing to run qemu-img")
    return path


def run_limited(argv: Sequence[str], limits: Limits = INSPECT_LIMITS) -> str:
    """Run argv and return its stdout. Raises ToolError on failure, limit or timeout."""
    full = [
        _prlimit(),
        f"--as={limits.address_space}",
        f"--cpu={limits.cpu_seconds}",
        "--",
        *argv,
    ]
    # C locale so error texts are stable; no inherited env that could change qemu-img behaviour
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **_TOOL_ENV}
    name = os.path.basename(argv[0])
    try:
        proc = subprocess.run(  # noqa: S603 - argv list built from trusted parts, no shell
            full,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=limits.timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(
            f"{name} did not finish within {limits.timeout:.0f} s", returncode=None, stderr=""
        ) from exc
    except OSError as exc:
        raise ToolError(f"cannot run {name}: {exc}", returncode=None, stderr="") from exc
    if proc.returncode != 0:
        stderr = proc.stderr.strip()
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode} (resource limit?)"
        else:
            why = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
        raise ToolError(f"{name} failed: {why}", returncode=proc.returncode, stderr=stderr)
    return proc.stdout
