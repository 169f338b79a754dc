"""Converge one instance on this host to what the API wants."""

from __future__ import annotations

import logging
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from nubes import faults
from nubes.agent import containers, records
from nubes.agent.guestuser import GuestUser
from nubes.agent.imagecache import ImageCache
from nubes.agent.layout import HostLayout, Loaded, LocalState
from nubes.agent.reverter import Reverter
from nubes.hypervisor.base import (
    BootSpec,
    ContainerNic,
    ContainerSpec,
    HypervisorDriver,
    InstanceInfo,
    InstanceSpec,
    NicSpec,
    PowerState,
)
from nubes.network.base import NetworkDriver, PortSpec, bridge_name, tap_name
from nubes.network.secgroups import Rule
from nubes.schemas.agent import DesiredInstance, ObservedInstance, StepDone
from nubes.storage import consolelog, disks
from nubes.storage.images import ISO_FORMAT
from nubes.storage.seed import SeedData, SeedNic, guest_hostname, write_seed

log = logging.getLogger("nubes.agent")


@dataclass
class InstanceReconciler:
    layout: HostLayout
    hypervisor: HypervisorDriver
    network: NetworkDriver
    images: ImageCache
    guest: GuestUser = field(default_factory=GuestUser)  # who QEMU runs as
    # build steps finished per instance since the last report (the API's operation log)
    steps: dict[str, list[StepDone]] = field(default_factory=dict)
    crash_after: str = ""  # TEST ONLY: settings.fault_crash_after (nubes/faults.py)

    def take_steps(self, instance_id: str) -> list[StepDone]:
        return self.steps.pop(instance_id, [])

    # -- specs ---------------------------------------------------------------------------
    def ports(self, want: DesiredInstance) -> list[PortSpec]:
        return [
            PortSpec(
                id=p.id,
                network_id=p.network_id,
                bridge=bridge_name(p.network_id),
                tap=tap_name(p.id),
                mac=p.mac,
                ip=p.ip,
                owner_uid=self.guest.uid,
                mtu=p.mtu,
                port_security=p.port_security,
                allowed=tuple((x.ip, x.mac) for x in p.allowed),
                rules=tuple(
                    Rule(
                        r.direction,
                        r.protocol,
                        r.port_min,
                        r.port_max,
                        None if r.remotes is None else tuple(r.remotes),
                    )
                    for r in p.rules
                ),
            )
            for p in want.ports
        ]

    def spec(self, want: DesiredInstance, state: LocalState) -> InstanceSpec:
        if is_container(want):
            inst_dir = self.layout.instance_dir(want.id)
            return InstanceSpec(
                id=want.id,
                vcpus=want.vcpus,
                ram_mb=want.ram_mb,
                disk=inst_dir / "rootfs",
                seed=None,
                instance_dir=inst_dir,
                container=ContainerSpec(
                    hostname=guest_hostname(want.name, want.id),
                    uid_base=containers.uid_base(want.id),
                    nics=tuple(
                        ContainerNic(
                            peer=containers.peer_name(p.id),
                            name=f"eth{i}",
                            mac=p.mac,
                            cidr=f"{p.ip}/{p.prefix}",
                            gateway=p.gateway if p.primary else None,
                        )
                        for i, p in enumerate(want.ports)
                    ),
                ),
            )
        boot = BootSpec()
        if want.image_kernel_sha256:
            kernel = self.images.ensure(want.image_id, "kernel", "kernel", want.image_kernel_sha256)
            self.guest.share(kernel, 0o640)
            initrd = None
            if want.image_initrd_sha256:
                initrd = self.images.ensure(
                    want.image_id, "initrd", "initrd", want.image_initrd_sha256
                )
                self.guest.share(initrd, 0o640)
            boot = BootSpec(kernel=kernel, initrd=initrd, cmdline=want.image_cmdline)
        cdrom = None
        if want.cdrom:
            cdrom = self.images.ensure(want.image_id, "file", ISO_FORMAT, want.image_sha256)
            self.guest.share(cdrom, 0o640)
        return InstanceSpec(
            id=want.id,
            vcpus=want.vcpus,
            ram_mb=want.ram_mb,
            disk=self.layout.disk(want.id),
            seed=self.layout.seed(want.id),
            instance_dir=self.layout.instance_dir(want.id),
            nics=tuple(
                NicSpec(tap_name(p.id), p.mac, p.mtu, self.network.guest_offloads())
                for p in want.ports
            ),
            boot=boot,
            vnc_password=state.vnc_password,
            run_as=self.guest.name,
            cdrom=cdrom,
            cdrom_once=want.cdrom_once,
        )

    def seed_data(self, want: DesiredInstance) -> SeedData:
        nics = tuple(
            SeedNic(
                mac=p.mac,
                address_cidr=f"{p.ip}/{p.prefix}",
                gateway=p.gateway if p.primary else None,  # one default route
                dns=(p.gateway,),
                mtu=p.mtu,
            )
            for p in want.ports
        )
        return SeedData(
            # a rebuilt guest is a new instance to cloud-init (it runs its first boot again)
            instance_id=f"{want.id}.r{want.rebuild_gen}" if want.rebuild_gen else want.id,
            hostname=want.name,
            public_keys=tuple(want.public_keys),
            default_user=want.default_user or None,
            user_data=want.user_data,
            network=nics,
        )

    # -- steps ---------------------------------------------------------------------------
    def build(self, want: DesiredInstance) -> None:
        """Disk, seed, ports, QEMU: each step registers its undo; a failure leaves nothing."""
        if is_container(want):
            self.build_container(want)
            return
        inst_dir = self.layout.instance_dir(want.id)
        inst_dir.mkdir(parents=True, exist_ok=True)
        self.guest.share(inst_dir, 0o750)
        state = LocalState(
            vnc_password=secrets.token_urlsafe(6)[:8],
            rebuild_gen=want.rebuild_gen,  # a new disk is as new as a rebuild's
            resize_gen=want.resize_gen,
        )
        done = self.steps.setdefault(want.id, [])
        revert = Reverter()
        try:
            base = self.images.ensure(want.image_id, "file", want.image_format, want.image_sha256)
            self.guest.share(base, 0o640)  # read-only for guests: shared by all their overlays
            done.append(_stamp("image"))
            if want.image_format == ISO_FORMAT:  # an installer CD installs onto a blank disk
                disks.create_blank(self.layout.disk(want.id), want.disk_gb)
            else:
                disks.create_overlay(
                    base,
                    want.image_format,
                    self.layout.disk(want.id),
                    want.disk_gb,
                    want.image_virtual_size or None,
                    template=True,  # the cache's images are never written or replaced
                )
            revert.add("disk", lambda: disks.delete_disk(self.layout.disk(want.id)))
            self.guest.own(self.layout.disk(want.id), 0o600)
            self._step(done, "disk")
            write_seed(self.seed_data(want), self.layout.seed(want.id))
            revert.add("seed", lambda: self.layout.seed(want.id).unlink(missing_ok=True))
            self.guest.share(self.layout.seed(want.id), 0o640)
            self._step(done, "seed")
            for port in self.ports(want):
                self.network.plug_port(port)
                revert.add(f"port {port.tap}", partial(self.network.unplug_port, port.tap))
            self._step(done, "ports")
            state.built = True
            self._start(want, state)
            revert.add("qemu", lambda: self.hypervisor.destroy(want.id))
            self._step(done, "qemu")
        except Exception:
            revert.fail()
            shutil.rmtree(inst_dir, ignore_errors=True)
            done.append(_stamp("rolled back"))
            raise
        revert.success()

    def build_container(self, want: DesiredInstance) -> None:
        """Image, rootfs, seed, ports, runc: the same steps and undo as a VM's."""
        inst_dir = self.layout.instance_dir(want.id)
        inst_dir.mkdir(parents=True, exist_ok=True)
        state = LocalState()
        done = self.steps.setdefault(want.id, [])
        revert = Reverter()
        try:
            stored = self.images.ensure(want.image_id, "file", "rootfs", want.image_sha256)
            done.append(_stamp("image"))
            containers.unpack(stored, inst_dir, want)
            revert.add("rootfs", lambda: shutil.rmtree(inst_dir / "rootfs", ignore_errors=True))
            self._step(done, "disk")
            uid = containers.uid_base(want.id)
            containers.write_seed(inst_dir, self.seed_data(want), uid)
            self._step(done, "seed")
            for port in self.ports(want):  # unplugging deletes the veth: both its ends
                revert.add(f"port {port.tap}", partial(self.network.unplug_port, port.tap))
            self._plug_container(want)
            self._step(done, "ports")
            state.built = True
            self._start(want, state)
            revert.add("runc", lambda: self.hypervisor.destroy(want.id))
            self._step(done, "qemu")  # the step that starts the instance, whatever runs it
        except Exception:
            revert.fail()
            shutil.rmtree(inst_dir, ignore_errors=True)
            done.append(_stamp("rolled back"))
            raise
        revert.success()

    def _plug_container(self, want: DesiredInstance) -> None:
        """Each port's veth, its host end plugged like a VM's tap (the same bridge, anti-
        spoofing and security groups). Idempotent."""
        for port in self.ports(want):
            if not containers.link_exists(port.tap):  # it died with a stopped container
                self.network.unplug_port(port.tap)  # what a switch kept of it (OVS's port)
            peer = containers.peer_name(port.id)
            containers.make_veth(port.tap, peer, port.mtu, self.network.guest_offloads())
            self.network.plug_port(port)

    def _step(self, done: list[StepDone], step: str) -> None:
        done.append(_stamp(step))
        faults.crash_if(self.crash_after, step)

    def _start(self, want: DesiredInstance, state: LocalState) -> None:
        log_path = self.layout.console_log(want.id)
        state.console_offset = log_path.stat().st_size if log_path.exists() else 0
        state.ready = False
        state.reboot_gen = want.reboot_gen
        self.layout.save_state(want.id, state)
        spec = self.spec(want, state)
        self.hypervisor.spawn(spec)
        state.running_expected, state.cdrom = True, spec.cdrom is not None
        self.layout.save_state(want.id, state)

    def start(self, want: DesiredInstance) -> None:
        state = self.layout.load_state(want.id).state
        state.fault = ""  # the user started it: what was repaired before has been seen
        self._plug_and_start(want, state)

    def _plug_and_start(self, want: DesiredInstance, state: LocalState) -> None:
        if is_container(want):
            self._plug_container(want)
        else:
            for port in self.ports(want):
                self.network.plug_port(port)
        self._start(want, state)

    def stop(self, want: DesiredInstance) -> None:
        state = self.layout.load_state(want.id).state
        state.running_expected = False
        self.layout.save_state(want.id, state)
        self.hypervisor.power_off(want.id, timeout=10.0)

    def reboot(self, want: DesiredInstance) -> None:
        if is_container(want):  # its namespace and veths die with it: start it anew
            self.stop(want)
            state = self.layout.load_state(want.id).state
            state.fault = ""
            self._plug_and_start(want, state)
            return
        state = self.layout.load_state(want.id).state
        log_path = self.layout.console_log(want.id)
        state.console_offset = log_path.stat().st_size if log_path.exists() else 0
        state.ready, state.reboot_gen, state.fault = False, want.reboot_gen, ""
        self.layout.save_state(want.id, state)
        self.hypervisor.reboot(want.id, hard=want.hard_reboot)

    def eject(self, want: DesiredInstance) -> None:
        """The user ejected the CD of a running guest: out of its drive now, so its next boot
        (a reboot by the installer) finds the disk."""
        self.hypervisor.eject_cdrom(want.id)
        state = self.layout.load_state(want.id).state
        state.cdrom = False
        self.layout.save_state(want.id, state)

    def keep(self, want: DesiredInstance, loaded: Loaded, damage: str, running: bool) -> str:
        """An instance whose record is damaged keeps its disk, whatever the record says: the
        running guest is adopted, a stopped one that should run starts from its disk, and the
        record is rewritten with what could be read. Returns the fault to report."""
        path = self.layout.record(want.id)
        if not self.layout.disk(want.id).exists():
            return f"agent record {path.name} {damage} and the disk is missing: nothing kept"
        copy = records.keep_copy(path) if loaded.exists else ""
        state = loaded.state
        state.built = True
        state.vnc_password = state.vnc_password or secrets.token_urlsafe(6)[:8]
        state.reboot_gen = max(state.reboot_gen, want.reboot_gen)  # no reboot nobody asked for
        restart = not running and want.desired_state == "running"
        if running:
            action = "adopted the running guest"
        else:
            action = "restarted the guest from its disk" if restart else "the guest stays off"
        kept = f" (the old record is kept as {copy})" if copy else ""
        state.fault = f"agent record {path.name} {damage}: kept the disk, {action}{kept}"
        log.warning("instance %s: %s", want.id, state.fault)
        if restart:
            self._plug_and_start(want, state)
        else:
            state.running_expected = running
            self.layout.save_state(want.id, state)
        return state.fault

    def teardown(self, instance_id: str, taps: list[str]) -> None:
        """Remove everything of an instance from this host. Idempotent."""
        self.hypervisor.destroy(instance_id)
        for tap in taps:
            self.network.unplug_port(tap)
        shutil.rmtree(self.layout.instance_dir(instance_id), ignore_errors=True)

    # -- observation -----------------------------------------------------------------------
    def check_ready(self, want: DesiredInstance, state: LocalState) -> bool:
        if not want.image_ready_pattern:
            return True  # an image that signals nothing is as ready as it gets once running
        if state.ready:
            return True
        try:
            with self.layout.console_log(want.id).open("rb") as fh:
                fh.seek(state.console_offset)
                text = fh.read(8 * 1024 * 1024).decode("utf-8", errors="replace")
        except OSError:
            return False
        if want.image_ready_pattern in text:
            state.ready = True
            self.layout.save_state(want.id, state)
        return state.ready

    def observe(self, want: DesiredInstance, info: InstanceInfo) -> ObservedInstance:
        state = self.layout.load_state(want.id).state
        if info.state in (PowerState.RUNNING, PowerState.PAUSED):
            ready = self.check_ready(want, state)
            if consolelog.rotate(self.layout.console_log(want.id)):
                state.console_offset = 0  # what it held was checked, and is gone from the file
                self.layout.save_state(want.id, state)
            return ObservedInstance(
                id=want.id,
                status="ACTIVE",
                ready=ready,
                reboot_gen=state.reboot_gen,
                fault=state.fault,
            )
        fault = state.fault
        if state.running_expected:
            fault = info.reason or "the guest stopped on its own"
            state.running_expected = False
            self.layout.save_state(want.id, state)
        return ObservedInstance(id=want.id, status="SHUTOFF", fault=fault[:1000])


def is_container(want: DesiredInstance) -> bool:
    return want.image_format == "rootfs"


def _stamp(step: str) -> StepDone:
    return StepDone(name=step, at=datetime.now(UTC))
