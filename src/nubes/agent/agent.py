"""The agent: register, heartbeat, long-poll the desired state, converge, report.

Level-triggered: every pass compares the whole desired state with what the host has, so a
restart (or a missed event) needs no journal to recover from.
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nubes
from nubes.agent import cloud, fencing, lifecycle
from nubes.agent.instances import InstanceReconciler
from nubes.agent.layout import HostLayout, Loaded
from nubes.agent.metadata import metadata_table
from nubes.agent.volumes import VolumeReconciler
from nubes.client import ApiError, NubesClient
from nubes.conf import Settings
from nubes.hypervisor.base import HypervisorDriver, InstanceInfo, PowerState
from nubes.metadata.server import MetadataServer, MetadataService
from nubes.network.base import (
    DhcpHost,
    ExternalSpec,
    NetworkDriver,
    NetworkSpec,
    OverlayPeer,
    RemotePort,
    bridge_name,
    tap_name,
)
from nubes.schemas.agent import (
    DesiredInstance,
    DesiredNetwork,
    DesiredState,
    HostRegister,
    ObservedInstance,
    ObservedVolume,
    Report,
)

if TYPE_CHECKING:
    from nubes.agent.migrations import MigrationReconciler

log = logging.getLogger("nubes.agent")


def network_spec(net: DesiredNetwork, local_ip: str) -> NetworkSpec:
    ext = net.external
    return NetworkSpec(
        id=net.id,
        bridge=bridge_name(net.id),
        cidr=net.cidr,
        gateway=net.gateway,
        mtu=net.mtu,
        vni=net.vni,
        overlay=net.overlay,
        local_underlay_ip=local_ip or None,
        peers=tuple(OverlayPeer(p) for p in net.peers),
        remote_ports=tuple(RemotePort(r.mac, r.address) for r in net.remote_ports),
        serve_dhcp=net.serve,
        gateway_underlay_ip=net.gateway_host or None,
        dhcp_hosts=tuple(DhcpHost(r.mac, r.ip, r.hostname) for r in net.reservations),
        dns=(),
        external=ExternalSpec(
            uplink=ext.uplink,
            address=ext.address,
            prefix=ext.prefix,
            gateway=ext.gateway,
            floating=tuple((f.address, f.fixed) for f in ext.floating),
            off_limits=tuple(ext.off_limits),
        )
        if ext is not None and net.serve
        else None,
    )


def shows(desired: DesiredState, report: Report) -> bool:
    """The desired state already shows each reported instance's status (or no longer names
    it): the API has nothing to learn from the report."""
    wanted = {i.id: i.status for i in desired.instances}
    volumes = {v.id: (v.status, v.port) for v in desired.volumes}
    return all(wanted.get(obs.id, obs.status) == obs.status for obs in report.instances) and all(
        volumes.get(obs.id, (obs.status, obs.port)) == (obs.status, obs.port)
        for obs in report.volumes
    )


@dataclass
class Agent:
    settings: Settings
    client: NubesClient
    hypervisor: HypervisorDriver
    network: NetworkDriver
    layout: HostLayout
    instances: InstanceReconciler
    host_name: str
    host_id: str = ""
    metadata: MetadataService = field(default_factory=MetadataService)
    metadata_server: MetadataServer | None = None  # None: answers only in-process (tests)
    console_port: int = 0  # where consoles are served to the API (agent/consoles.py); 0: not
    fenced: bool = False  # the API said this host is fenced (agent/fencing.py)
    migrations: MigrationReconciler | None = None  # None: this hypervisor does not migrate
    _latest: DesiredState | None = None  # the long-poll's last answer
    _fresh: threading.Event = field(default_factory=threading.Event)
    _snapshots_sent: set[str] = field(default_factory=set)  # uploaded or failed: not again

    @property
    def volumes(self) -> VolumeReconciler:
        """On the instances' parts (a test may swap their hypervisor)."""
        rec = self.instances
        return VolumeReconciler(self.layout, rec.hypervisor, rec.images, rec.guest)

    def register(self) -> None:
        caps = self.hypervisor.capabilities()
        res = self.hypervisor.host_resources()
        if caps.accel_note:
            log.warning("%s", caps.accel_note)
        self.host_id = self.client.register_host(
            HostRegister(
                name=self.host_name,
                address=self.settings.host_address,
                accel=caps.accel,
                accel_note=caps.accel_note,
                state_dir=str(self.layout.root),
                vcpus=res.vcpus,
                ram_mb=res.ram_mb,
                disk_gb=res.disk_gb,
                overlays=",".join(self.network.overlays()),
                network_driver=self.settings.network_driver,
                agent_version=nubes.__version__,
                console_port=self.console_port,
                networks=",".join(self.network.host_ranges()),
                runtimes=",".join(self.hypervisor.runtimes()),
            )
        )
        log.info("registered host %s (%s) as %s", self.host_name, caps.accel, self.host_id)

    # -- loops ------------------------------------------------------------------------------
    def heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_interval):
            try:
                self.client.heartbeat(self.host_id)
            except ApiError as exc:
                log.warning("heartbeat failed: %s", exc.detail)
                self.heard(exc, stop)

    def poll_loop(self, stop: threading.Event) -> None:
        """Long-poll the desired state: the API answers when this host's generation moves (or
        after poll_timeout); each answer starts a pass at once."""
        since, fetched = -1, 0.0
        while not stop.is_set():
            if time.monotonic() - fetched > self.settings.resync_interval:
                since = -1  # the whole desired state at once, changed or not
            # each wait a little shorter at random: hosts that came up together (after a power
            # cut, or the API's restart) do not all come back in the same second, every time
            wait = self.settings.poll_timeout * random.uniform(0.8, 1.0)
            try:
                desired = self.client.desired(self.host_id, since, wait)
            except ApiError as exc:
                log.warning("cannot read desired state: %s", exc.detail)
                self.heard(exc, stop)
                stop.wait(self.settings.sync_interval)
                continue
            except Exception:  # this thread must outlive anything: the passes depend on it
                log.exception("cannot read desired state")
                stop.wait(self.settings.sync_interval)
                continue
            if desired is None:  # no change in `wait`: what this host has is current
                continue
            since, fetched = desired.generation, time.monotonic()
            self._latest = desired
            self._fresh.set()

    def heard(self, exc: ApiError, stop: threading.Event) -> bool:
        """True when exc says this host is fenced: the agent stops, and its loop destroys
        every guest (agent/fencing.py)."""
        if not fencing.is_fenced(exc):
            return False
        if not self.fenced:
            log.error("this host is fenced: %s; destroying its guests and stopping", exc.detail)
        self.fenced = True
        stop.set()
        self.wake()
        return True

    def destroy_everything(self) -> list[str]:
        return fencing.destroy_everything(
            self.hypervisor, self.network, self.layout, self.instances
        )

    def wake(self) -> None:
        """Start the next pass now (or notice a stop now)."""
        self._fresh.set()

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self.poll_loop, args=(stop,), daemon=True).start()
        last: tuple[int, Report] | None = None
        reported = 0.0
        while not stop.is_set():
            # a pass at least every sync_interval (a guest that dies is reported within one),
            # and at once when the desired state moves
            self._fresh.wait(self.settings.sync_interval)
            self._fresh.clear()
            desired = self._latest
            if desired is None or stop.is_set() or self.fenced:
                continue
            report = self.converge(desired)
            # only what is news: a report that changed, or a new desired state whose statuses
            # say otherwise; an idle host sends nothing but its heartbeat (and a resync, for an
            # API that restarted and forgot the leftovers). A host woken only because a
            # neighbour's port came or went has nothing to say.
            if (
                last is not None
                and last[1] == report
                and (last[0] == desired.generation or shows(desired, report))
                and time.monotonic() - reported < self.settings.resync_interval
            ):
                continue
            try:
                self.client.report(self.host_id, report)
                last, reported = (desired.generation, report), time.monotonic()
            except ApiError as exc:
                log.warning("report failed: %s", exc.detail)
                self.heard(exc, stop)
        if self.fenced:  # here, in the loop's own thread: no pass can run beside it
            self.destroy_everything()
        if self.metadata_server is not None:
            self.metadata_server.close()

    # -- convergence ---------------------------------------------------------------------------
    def converge(self, desired: DesiredState) -> Report:
        record, refused = cloud.accept(self.layout, desired)
        if record is None:
            log.error("%s", refused)
            return Report(instances=[], leftovers=[f"error: {refused}"])
        infos = {i.id: i for i in self.hypervisor.list_instances()}
        for net in desired.networks:
            try:
                self.network.ensure_network(network_spec(net, desired.address))
            except Exception:
                log.exception("network %s could not be set up", net.id)
        self.sync_metadata(desired)
        self.sync_port_filters(desired)
        migrated, hold = self.migrations.converge(desired) if self.migrations else ([], set())
        observed = []
        for want in desired.instances:
            if want.id in hold:  # a cold migration's source: stopped on purpose
                observed.append(ObservedInstance(id=want.id, status="SHUTOFF"))
                continue
            try:
                obs = self.converge_instance(want, infos.get(want.id))
            except Exception as exc:
                log.exception("instance %s failed", want.id)
                obs = ObservedInstance(id=want.id, status="ERROR", fault=_fault(exc))
            if obs is not None:
                obs.steps = self.instances.take_steps(want.id)
                observed.append(obs)
        observed_volumes = self.converge_volumes(desired)
        self.bury(desired, infos)
        if desired.gc_request > record.gc_done:
            self.collect_leftover_instances(desired)
            record.gc_done = desired.gc_request
            cloud.save(self.layout, record)
        self.collect_garbage(desired)
        return Report(
            instances=observed,
            volumes=observed_volumes,
            leftovers=self.leftovers(desired),
            migrations=migrated,
        )

    def converge_volumes(self, desired: DesiredState) -> list[ObservedVolume]:
        try:
            return self.volumes.converge(desired.volumes, desired.instances)
        except Exception:
            log.exception("volumes could not be converged")
            return []

    def take_snapshots(self, want: DesiredInstance) -> None:
        """Each queued snapshot once per agent process (a failure is reported, not retried)."""
        for image_id in want.snapshots:
            if image_id in self._snapshots_sent:
                continue
            self._snapshots_sent.add(image_id)
            try:
                lifecycle.snapshot(self.instances, want, image_id, self._upload_snapshot)
            except Exception as exc:
                log.exception("snapshot %s of %s failed", image_id, want.id)
                try:
                    self.client.snapshot_failed(self.host_id, image_id, _fault(exc))
                except ApiError as api:
                    log.warning("could not report the failed snapshot: %s", api.detail)

    def _upload_snapshot(self, image_id: str, path: Path) -> None:
        with path.open("rb") as fh:
            self.client.upload_snapshot(self.host_id, image_id, iter(lambda: fh.read(1 << 20), b""))

    def sync_metadata(self, desired: DesiredState) -> None:
        """Answer the instances of the networks this host serves, on their bridges."""
        self.metadata.set_table(metadata_table(desired.networks))
        if self.metadata_server is not None:
            served = {
                n.id: self.network.metadata_endpoint(n.id) for n in desired.networks if n.serve
            }
            self.metadata_server.serve(served)

    def sync_port_filters(self, desired: DesiredState) -> None:
        """Security groups change under running guests: each pass puts every plugged port's
        rules as they are now (the driver skips what did not change)."""
        plugged = {p.tap for p in self.network.list_ports()}
        for want in desired.instances:
            if want.desired_state == "deleted":
                continue
            for port in self.instances.ports(want):
                if port.tap not in plugged:
                    continue
                try:
                    self.network.ensure_port_filter(port)
                except Exception:
                    log.exception("security groups of port %s could not be applied", port.id)

    def converge_instance(
        self, want: DesiredInstance, info: InstanceInfo | None
    ) -> ObservedInstance | None:
        rec = self.instances
        taps = [tap_name(p.id) for p in want.ports]
        if want.desired_state == "deleted":
            rec.teardown(want.id, taps)
            return ObservedInstance(id=want.id, status="DELETED")
        running = info is not None and info.state in (PowerState.RUNNING, PowerState.PAUSED)
        loaded = self.layout.load_state(want.id)
        damage = loaded.damage or self._lost(want, loaded)
        if damage:  # never a teardown or a new disk: see InstanceReconciler.keep
            fault = rec.keep(want, loaded, damage, running)
            if not self.layout.disk(want.id).exists():
                return ObservedInstance(id=want.id, status="ERROR", fault=fault)
            info = self.hypervisor.info(want.id)
            running = info.state in (PowerState.RUNNING, PowerState.PAUSED)
        state = loaded.state
        if not state.built:
            if want.status == "ERROR":
                return None  # a failed build stays failed until the user deletes it
            # leftovers of a build cut short by a crash; a build makes the instance's directory
            # first and a teardown removes it last, so without one there is nothing to undo
            if info is not None or self.layout.instance_dir(want.id).exists():
                rec.teardown(want.id, taps)
            if want.desired_state != "running":  # stopped before it was ever built
                return ObservedInstance(id=want.id, status="SHUTOFF")
            rec.build(want)
            info = self.hypervisor.info(want.id)
        elif want.rebuild_gen > state.rebuild_gen:
            lifecycle.rebuild(rec, want, state)
            info = self.hypervisor.info(want.id)
        elif want.resize_gen > state.resize_gen:
            lifecycle.resize(rec, want, state)
            info = self.hypervisor.info(want.id)
        elif want.desired_state == "stopped" and running:
            rec.stop(want)
            info = self.hypervisor.info(want.id)
        elif want.desired_state == "running" and not running and not state.running_expected:
            rec.start(want)
            info = self.hypervisor.info(want.id)
        elif running and want.reboot_gen > state.reboot_gen:
            rec.reboot(want)
        elif running and state.cdrom and not want.cdrom:
            rec.eject(want)
        assert info is not None or not running
        if want.snapshots and state.built:
            self.take_snapshots(want)
        obs = rec.observe(want, info or InstanceInfo(id=want.id, state=PowerState.SHUTOFF))
        done = self.layout.load_state(want.id).state  # as the steps above left it
        obs.rebuild_gen, obs.resize_gen = done.rebuild_gen, done.resize_gen
        return obs

    def _lost(self, want: DesiredInstance, loaded: Loaded) -> str:
        """A record gone from an instance the API saw built, whose disk is still here."""
        if loaded.exists or want.status not in ("ACTIVE", "SHUTOFF"):
            return ""  # no record during a build: the build was cut short, undo it
        return "missing" if self.layout.disk(want.id).exists() else ""

    def leftovers(self, desired: DesiredState) -> list[str]:
        """What nubes made on this host that nothing in the desired state wants."""
        found = [f"instance {i}" for i in sorted(self.leftover_instances(desired))]
        wanted_taps = _wanted_taps(desired)
        found += [f"tap {p.tap}" for p in self.network.list_ports() if p.tap not in wanted_taps]
        wanted_nets = {n.id for n in desired.networks}
        found += [f"network {n}" for n in self.network.list_networks() if n not in wanted_nets]
        return found + self.volumes.leftovers(desired.volumes)

    def bury(self, desired: DesiredState, infos: dict[str, InstanceInfo]) -> None:
        """Tear down the instances the API deleted while this host was away (its tombstones)."""
        wanted = {i.id for i in desired.instances}
        for instance_id in sorted(set(desired.deleted) - wanted):
            if instance_id in infos or self.layout.instance_dir(instance_id).exists():
                log.info("removing instance %s, deleted while this host was away", instance_id)
                self._quietly(self.instances.teardown, instance_id, [])

    def leftover_instances(self, desired: DesiredState) -> set[str]:
        wanted = {i.id for i in desired.instances} | {m.instance_id for m in desired.migrations}
        running = {i.id for i in self.hypervisor.list_instances()}
        return (running | {p.name for p in self.layout.instances.iterdir()}) - wanted

    def collect_leftover_instances(self, desired: DesiredState) -> None:
        """Only when `nubes gc` asks: an instance the desired state does not name may be one
        a wrong or empty desired state forgot, and its disk is a user's data."""
        for instance_id in sorted(self.leftover_instances(desired)):
            log.info("removing leftover instance %s (nubes gc)", instance_id)
            self._quietly(self.instances.teardown, instance_id, [])

    def collect_garbage(self, desired: DesiredState) -> None:
        """Remove the network leftovers nothing wants, on every pass: unless an instance is
        left over, whose taps and bridges stay with it until `nubes gc`."""
        if self.leftover_instances(desired):
            return
        wanted_taps = _wanted_taps(desired)
        for port in self.network.list_ports():
            if port.tap not in wanted_taps:
                self._quietly(self.network.unplug_port, port.tap)
        wanted_nets = {n.id for n in desired.networks}
        for net_id in self.network.list_networks():
            if net_id not in wanted_nets:
                self._quietly(self.network.delete_network, net_id)

    @staticmethod
    def _quietly(fn: Callable[..., object], *args: object) -> None:
        """One leftover that cannot be removed must not stop the rest (it is reported)."""
        try:
            fn(*args)
        except Exception:
            log.exception("could not remove a leftover (%s%r)", fn.__name__, args)


def _wanted_taps(desired: DesiredState) -> set[str]:
    """The instances' taps, and those plugged for an incoming migration."""
    incoming = [m.instance for m in desired.migrations if m.instance is not None]
    return {tap_name(p.id) for i in [*desired.instances, *incoming] for p in i.ports}


def _fault(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if _out_of_space(exc):
        message = f"no space left on the host's disk: {message}"
    return message[:1000]


def _out_of_space(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain, or in a host tool's error output (qemu-img)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(getattr(exc, "stderr", "") or exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
