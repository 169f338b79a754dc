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
# Full copies of large images legitimately take CPU time; memory stays bounded.
COPY_LIMITS = Limits(address_space=1 * GiB, cpu_seconds=3600, timeout=3600.0)


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
    return LimitedRun(argv, limits).wait()


class LimitedRun:
    """argv started under limits; `wait` collects it. Lets a caller overlap a tool's run
    (mostly qemu-img's start-up) with other work."""

    def __init__(self, argv: Sequence[str], limits: Limits = INSPECT_LIMITS) -> None:
        self.name = os.path.basename(argv[0])
        self.limits = limits
        full = [
            _prlimit(),
            f"--as={limits.address_space}",
            f"--cpu={limits.cpu_seconds}",
            "--",
            *argv,
        ]
        # C locale so error texts are stable; no inherited env that could change qemu-img
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - argv list from trusted parts, no shell
                full,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        except OSError as exc:
            raise ToolError(f"cannot run {self.name}: {exc}", returncode=None, stderr="") from exc

    def wait(self) -> str:
        """Its stdout. Raises ToolError on failure, limit or timeout (the child is killed)."""
        try:
            stdout, stderr = self.proc.communicate(timeout=self.limits.timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise ToolError(
                f"{self.name} did not finish within {self.limits.timeout:.0f} s",
                returncode=None,
                stderr="",
            ) from exc
        code = self.proc.returncode
        if code != 0:
            stderr = stderr.strip()
            if code < 0:
                why = f"killed by signal {-code} (resource limit?)"
            else:
                why = stderr.splitlines()[-1] if stderr else f"exit status {code}"
            raise ToolError(f"{self.name} failed: {why}", returncode=code, stderr=stderr)
        return stdout

    def kill(self) -> None:
        """Stop it if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
