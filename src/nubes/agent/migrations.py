"""Converge this host's part of each migration (control/migrations.py has the phases).

Level-triggered like the rest of the agent: what was done is read back from the host (the
incoming marker beside the target's disk, the outgoing marker of a cold copy, QEMU's own
migration and block-job state), never from memory, so an agent killed at any point and
started again carries on. The source's long steps run in a thread per migration (a pass
must not wait for a disk to copy); a restarted agent starts the thread again and it resumes
from where QEMU is.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from nubes import faults
from nubes.agent.instances import InstanceReconciler
from nubes.agent.layout import LocalState
from nubes.agent.reverter import Reverter
from nubes.hypervisor.base import PowerState, volume_device
from nubes.hypervisor.qemu.migration import Outcome, QemuMigration, VolumeDisk
from nubes.network.base import tap_name
from nubes.schemas.agent import DesiredMigration, DesiredState, ObservedMigration
from nubes.storage import disks
from nubes.storage.seed import write_seed
from nubes.storage.tools import run_limited

log = logging.getLogger("nubes.agent")

INCOMING = "incoming.json"  # beside a target's prepared disk: which migration, which ports
OUTGOING = "outgoing.json"  # beside a cold source's disk: its copy is complete


@dataclass
class MigrationReconciler:
    rec: InstanceReconciler
    driver: QemuMigration
    guard: bool = True  # nftables: the target's ports accept only the source
    # the source's console log so far, by migration id (through the API); b"" if none
    fetch_log: Callable[[str], bytes] = lambda migration_id: b""
    _threads: dict[str, threading.Thread] = field(default_factory=dict)
    _results: dict[str, ObservedMigration] = field(default_factory=dict)
    # this host's own volumes (the desired state's): never removed as a migration's copy
    _keep: set[str] = field(default_factory=set)

    def converge(self, desired: DesiredState) -> tuple[list[ObservedMigration], set[str]]:
        """Reports, and the instances the ordinary reconciler must leave alone this pass
        (a cold migration's source, stopped on purpose)."""
        observed: list[ObservedMigration] = []
        hold: set[str] = set()
        self._keep = {v.id for v in desired.volumes}
        for mig in desired.migrations:
            try:
                obs = self._one(mig, desired)
            except Exception as exc:
                log.exception("migration %s failed", mig.id)
                obs = ObservedMigration(id=mig.id, state="failed", error=str(exc)[:4000])
                if mig.role == "target" and mig.phase in ("preparing", "migrating"):
                    self._remove_incoming(mig.instance_id, mig)
            if obs is not None:
                observed.append(obs)
            if mig.role == "source" and not mig.live and mig.phase in ("preparing", "migrating"):
                hold.add(mig.instance_id)
        self._settle(desired)
        return observed, hold

    def _one(self, mig: DesiredMigration, desired: DesiredState) -> ObservedMigration | None:
        if mig.role == "target":
            if mig.phase == "failed":
                self._remove_incoming(mig.instance_id, mig)
                return ObservedMigration(id=mig.id, state="cleaned")
            return self._prepare(mig, desired.address)
        if mig.phase == "done":
            return self._remove_source(mig)
        if mig.phase == "migrating":
            return self._source(mig)
        return None

    # -- target ----------------------------------------------------------------------------

    def _marker(self, instance_id: str) -> dict[str, object] | None:
        try:
            data = json.loads((self.rec.layout.instance_dir(instance_id) / INCOMING).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _prepare(self, mig: DesiredMigration, address: str) -> ObservedMigration:
        marker = self._marker(mig.instance_id)
        if marker is not None and marker.get("migration") == mig.id:
            if self.driver.incoming_status(mig.instance_id):
                return ObservedMigration(
                    id=mig.id,
                    state="prepared",
                    port=int(str(marker["port"])),
                    nbd_port=int(str(marker["nbd_port"])),
                )
            self._remove_incoming(mig.instance_id, mig)
            return ObservedMigration(id=mig.id, state="failed", error="the incoming QEMU exited")
        if mig.phase != "preparing":  # prepared before, and gone since: nothing to wait for
            return ObservedMigration(id=mig.id, state="failed", error="nothing prepared here")
        # a preparation cut short (no marker yet): start again from nothing
        self._remove_incoming(mig.instance_id, mig)
        port, nbd_port = _free_port(address), _free_port(address)
        self._build_incoming(mig, address, port, nbd_port)
        log.info("migration %s: incoming guest ready, ports %d and %d", mig.id, port, nbd_port)
        faults.crash_if(self.rec.crash_after, "incoming-ready")  # before it is reported
        return ObservedMigration(id=mig.id, state="prepared", port=port, nbd_port=nbd_port)

    def _build_incoming(self, mig: DesiredMigration, address: str, port: int, nbd: int) -> None:
        """The source's disk layout (same image, blank overlay of the same size), its seed,
        its ports plugged, and QEMU waiting; each step undone if a later one fails."""
        want, rec = mig.instance, self.rec
        assert want is not None
        layout = rec.layout
        inst_dir = layout.instance_dir(want.id)
        inst_dir.mkdir(parents=True, exist_ok=True)
        rec.guest.share(inst_dir, 0o750)
        revert = Reverter()
        revert.add("dir", partial(shutil.rmtree, inst_dir, ignore_errors=True))
        try:
            base = rec.images.ensure(want.image_id, "file", want.image_format, want.image_sha256)
            rec.guest.share(base, 0o640)
            disks.create_overlay(
                base,
                want.image_format,
                layout.disk(want.id),
                want.disk_gb,
                want.image_virtual_size or None,
                template=True,
            )
            rec.guest.own(layout.disk(want.id), 0o600)
            write_seed(rec.seed_data(want), layout.seed(want.id))
            rec.guest.share(layout.seed(want.id), 0o640)
            vols = []
            for vol in mig.volumes:  # blank, of the same size: the source fills them
                revert.add(f"volume {vol.id}", partial(self._drop_volumes, [vol.id]))
                self._blank_volume(vol.id, vol.size_gb)
                vols.append(VolumeDisk(vol.id, layout.volume(vol.id), vol.port))
            if mig.live:
                for p in rec.ports(want):
                    rec.network.plug_port(p)
                    revert.add(f"port {p.tap}", partial(rec.network.unplug_port, p.tap))
            if self.guard:
                _guard(mig.id, mig.peer, (port, nbd))
                revert.add("guard", partial(_unguard, mig.id))
            state = LocalState(
                vnc_password=secrets.token_urlsafe(6)[:8],
                built=True,
                running_expected=mig.live,
                ready=mig.live,  # a live guest has booted already
                reboot_gen=want.reboot_gen,
            )
            state.console_offset = self._carry_log(mig)  # readiness is not looked for again
            layout.save_state(want.id, state)
            spec = rec.spec(want, state)
            self.driver.prepare_incoming(spec, address, port, nbd, mig.live, tuple(vols))
            revert.add("qemu", partial(rec.hypervisor.destroy, want.id))
            marker = {"migration": mig.id, "live": mig.live, "port": port, "nbd_port": nbd}
            marker["volumes"] = [v.id for v in mig.volumes]  # to remove if it never happens
            (inst_dir / INCOMING).write_text(json.dumps(marker))
        except Exception:
            revert.fail()
            raise
        revert.success()

    def _carry_log(self, mig: DesiredMigration) -> int:
        """The source's console log becomes the start of ours (QEMU appends to it): the lines
        the guest prints during the move itself are the only ones missing. Best effort."""
        try:
            data = self.fetch_log(mig.id)
        except Exception as exc:  # a log is not worth failing a migration over
            log.warning("migration %s: the console log stays behind: %s", mig.id, exc)
            data = b""
        path = self.rec.layout.console_log(mig.instance_id)
        path.write_bytes(data)
        return len(data)

    def _remove_incoming(self, instance_id: str, mig: DesiredMigration) -> None:
        """Everything a target prepared for a migration that will not happen. Idempotent."""
        taps = [tap_name(p.id) for p in mig.instance.ports] if mig.instance else []
        volumes = [v.id for v in mig.volumes] + self._marked_volumes(instance_id)
        self.rec.teardown(instance_id, taps)  # QEMU first: it holds the volumes' files
        self._drop_volumes(volumes)
        if self.guard:
            _unguard(mig.id)

    def _marked_volumes(self, instance_id: str) -> list[str]:
        marker = self._marker(instance_id) or {}
        found = marker.get("volumes")
        return [str(v) for v in found] if isinstance(found, list) else []

    def _blank_volume(self, volume_id: str, size_gb: int) -> None:
        path = self.rec.layout.volume(volume_id)
        if volume_id in self._keep:  # never overwrite a volume this host has as its own
            raise RuntimeError(f"volume {volume_id} is this host's already")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a preparation cut short
        size = str(size_gb * 1024**3)
        run_limited(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size])
        self.rec.guest.own(path, 0o600)

    def _drop_volumes(self, volume_ids: list[str]) -> None:
        """Copies of volumes that are not (or no longer) this host's. Idempotent."""
        for volume_id in volume_ids:
            if volume_id not in self._keep:
                disks.delete_disk(self.rec.layout.volume(volume_id))

    def _settle(self, desired: DesiredState) -> None:
        """Incoming guests whose migration is over: the instance is ours now (stop the disk
        export, or end the cold copy's paused QEMU so the ordinary reconciler starts it), or
        the migration is gone from the desired state (remove what was prepared)."""
        listed = {m.instance_id for m in desired.migrations}
        ours = {i.id for i in desired.instances}
        root = self.rec.layout.instances
        for path in sorted(root.glob(f"*/{INCOMING}")) if root.exists() else []:
            instance_id = path.parent.name
            marker = self._marker(instance_id)
            if instance_id in listed or marker is None:
                continue
            mig_id = str(marker.get("migration", ""))
            if instance_id in ours:
                log.info("migration %s: instance %s is ours now", mig_id, instance_id)
                if marker.get("live"):
                    self.driver.stop_export(instance_id)
                else:
                    self.rec.hypervisor.destroy(instance_id)
                path.unlink(missing_ok=True)
                if self.guard:
                    _unguard(mig_id)
            else:
                log.info("instance %s: migration %s is over elsewhere", instance_id, mig_id)
                volumes = self._marked_volumes(instance_id)
                self.rec.teardown(instance_id, [])
                self._drop_volumes(volumes)
                if self.guard:
                    _unguard(mig_id)

    # -- source ----------------------------------------------------------------------------

    def _source(self, mig: DesiredMigration) -> ObservedMigration | None:
        if mig.id in self._results:
            return self._results[mig.id]
        thread = self._threads.get(mig.id)
        if thread is not None and thread.is_alive():
            return None
        if mig.live:
            info = self.rec.hypervisor.info(mig.instance_id)
            if info.state in (PowerState.RUNNING, PowerState.PAUSED):
                now = self.driver.outcome(mig.instance_id)
                if now.state in ("completed", "failed"):
                    return _observed(mig.id, now)
            elif info.state is not PowerState.NOSTATE:
                return ObservedMigration(
                    id=mig.id, state="failed", error="the guest is not running"
                )
        elif (self.rec.layout.instance_dir(mig.instance_id) / OUTGOING).exists():
            return ObservedMigration(id=mig.id, state="completed")
        log.info("migration %s: sending instance %s to %s", mig.id, mig.instance_id, mig.peer)
        target = self._run_live if mig.live else self._run_cold
        thread = threading.Thread(target=target, args=(mig,), daemon=True, name=f"mig-{mig.id}")
        self._threads[mig.id] = thread
        thread.start()
        return None

    def _run_live(self, mig: DesiredMigration) -> None:
        try:
            step = partial(faults.crash_if, self.rec.crash_after)  # TEST ONLY (nubes/faults.py)
            volumes = tuple(volume_device(v.id) for v in mig.volumes)
            outcome = self.driver.migrate_out(
                mig.instance_id, mig.peer, mig.port, mig.nbd_port, step, volumes
            )
        except Exception as exc:
            log.exception("live migration %s failed", mig.id)
            self.driver.cancel_out(mig.instance_id)
            outcome = Outcome("failed", error=str(exc))
        if outcome.state == "failed":
            self.driver.cancel_out(mig.instance_id)  # the mirror too: the guest stays here
        log.info(
            "migration %s: %s (total %d ms, downtime %d ms) %s",
            mig.id, outcome.state, outcome.total_ms, outcome.downtime_ms, outcome.error,
        )  # fmt: skip
        self._results[mig.id] = _observed(mig.id, outcome)

    def _run_cold(self, mig: DesiredMigration) -> None:
        instance_id = self.rec.layout.instance_dir(mig.instance_id)
        try:
            self.rec.hypervisor.power_off(mig.instance_id, timeout=60.0)
            self.driver.copy_disk_out(self.rec.layout.disk(mig.instance_id), mig.peer, mig.nbd_port)
            for vol in mig.volumes:  # the same channel: each into its own export
                path = self.rec.layout.volume(vol.id)
                self.driver.copy_disk_out(path, mig.peer, mig.nbd_port, volume_device(vol.id))
            (instance_id / OUTGOING).write_text(json.dumps({"migration": mig.id}))
            result = ObservedMigration(id=mig.id, state="completed")
        except Exception as exc:
            log.exception("cold migration %s failed", mig.id)
            result = ObservedMigration(id=mig.id, state="failed", error=str(exc)[:4000])
        self._results[mig.id] = result

    def _remove_source(self, mig: DesiredMigration) -> ObservedMigration:
        """The instance is the target's: the paused (or stopped) copy here goes. Idempotent."""
        self._results.pop(mig.id, None)
        self._threads.pop(mig.id, None)
        self.rec.teardown(mig.instance_id, [])  # its taps: the next pass's garbage collection
        self._drop_volumes([v.id for v in mig.volumes])  # the target's now
        return ObservedMigration(id=mig.id, state="cleaned")


def _observed(mig_id: str, outcome: Outcome) -> ObservedMigration:
    if outcome.state == "completed":
        return ObservedMigration(
            id=mig_id,
            state="completed",
            total_ms=outcome.total_ms,
            downtime_ms=outcome.downtime_ms,
        )
    return ObservedMigration(id=mig_id, state="failed", error=outcome.error[:4000])


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address or "127.0.0.1", 0))
        return int(s.getsockname()[1])


def _table(mig_id: str) -> str:
    return "nubes_mig_" + mig_id.replace("-", "")[:12]


def _guard(mig_id: str, source: str, ports: tuple[int, int]) -> None:
    """Only the source's underlay address may reach the migration and NBD ports."""
    table = _table(mig_id)
    dports = ", ".join(str(p) for p in ports)
    ruleset = (
        f"table inet {table} {{\n"
        "  chain input {\n"
        "    type filter hook input priority -10; policy accept;\n"
        f"    tcp dport {{ {dports} }} ip saddr != {source} drop\n"
        f"    tcp dport {{ {dports} }} meta nfproto ipv6 drop\n"
        "  }\n"
        "}\n"
    )
    _unguard(mig_id)
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True, capture_output=True)  # noqa: S607


def _unguard(mig_id: str) -> None:
    subprocess.run(  # noqa: S603
        ["nft", "delete", "table", "inet", _table(mig_id)],  # noqa: S607
        check=False,
        capture_output=True,
    )
