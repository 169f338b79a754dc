"""What agents and the API say to each other."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from nubes.schemas.common import Name, NoNul

# what fits the database's columns (32-bit integers, bounded strings): a 422, never a 500
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


class HostRegister(NoNul):
    name: Name
    address: str = Field(default="", max_length=64)
    accel: str = Field(max_length=16)
    accel_note: str = Field(default="", max_length=255)
    state_dir: str = Field(max_length=1024)
    vcpus: Count
    ram_mb: Count
    disk_gb: Count
    # comma-separated overlay kinds the host's kernel has
    overlays: str = Field(default="vxlan", max_length=64)
    network_driver: str = Field(default="linuxbridge", max_length=16)
    agent_version: str = Field(default="", max_length=32)
    # where the agent serves consoles to the API (mutual TLS); 0: it does not
    console_port: int = Field(default=0, ge=0, le=65535)
    # comma-separated IPv4 networks the host has addresses in: tenant networks keep off them
    networks: str = Field(default="", max_length=2048)
    # comma-separated: qemu, runc (containers)
    runtimes: str = Field(default="qemu", max_length=64, pattern=r"^[a-z0-9,]*$")


class JoinTokenCreate(NoNul):
    expires_in: int = Field(default=3600, ge=60, le=7 * 86400, description="seconds")


class JoinTokenCreated(BaseModel):
    token: str
    expires_at: datetime
    ca_sha256: str
    command: str  # what to run on the new machine


class JoinRequest(NoNul):
    token: str = Field(min_length=1, max_length=256)
    name: Name


class Joined(BaseModel):
    host_id: str
    host_name: str
    credential: str


class Credential(BaseModel):
    credential: str


class CertificateRequest(NoNul):
    csr: str = Field(max_length=8192, description="PEM certificate signing request (EC P-256)")


class Certificate(BaseModel):
    certificate: str  # PEM, signed by the cloud's CA for this host's id alone


class DesiredAllowed(BaseModel):
    ip: str  # CIDR
    mac: str | None = None  # None: the port's own


class DesiredRule(BaseModel):
    direction: str  # ingress | egress
    protocol: str = ""  # "" any
    port_min: int | None = None
    port_max: int | None = None
    remotes: list[str] | None = None  # CIDRs; None: anywhere


class DesiredPort(BaseModel):
    id: str
    network_id: str
    mac: str
    ip: str
    prefix: int
    gateway: str
    mtu: int
    primary: bool = True  # the first NIC: the guest's default route goes through it
    port_security: bool = True
    allowed: list[DesiredAllowed] = []
    rules: list[DesiredRule] = []  # of its security groups


class DesiredInstance(BaseModel):
    id: str
    name: str
    desired_state: str  # running | stopped | deleted
    status: str
    reboot_gen: int
    hard_reboot: bool
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_id: str
    image_format: str
    image_virtual_size: int = 0
    image_sha256: str
    image_kernel_sha256: str
    image_initrd_sha256: str
    image_cmdline: str
    image_ready_pattern: str
    default_user: str
    public_keys: list[str]
    user_data: str | None
    ports: list[DesiredPort]
    # the image (format iso) goes in a CD-ROM drive, booted first; False once ejected
    cdrom: bool = False
    cdrom_once: bool = False  # the installer's reboot ends QEMU, so the API can eject the CD
    rebuild_gen: int = 0
    resize_gen: int = 0
    snapshots: list[str] = []  # ids of queued images to copy its disk into and upload


class DesiredReservation(BaseModel):
    mac: str
    ip: str
    hostname: str


class DesiredMetadata(BaseModel):
    """What the metadata service of the serving host tells the instance behind one port."""

    instance_id: str
    name: str
    project_id: str
    ip: str
    mac: str
    key_name: str = ""
    public_keys: list[str] = []
    user_data: str | None = None


class DesiredRemotePort(BaseModel):
    mac: str
    address: str  # underlay address of the host the port is on


class DesiredFloating(BaseModel):
    address: str  # on the external network
    fixed: str  # the port's address


class DesiredExternal(BaseModel):
    """Egress NAT and floating IPs of a network, on the host that serves it."""

    uplink: str  # the host's interface to the external network
    address: str  # the network's router address there
    prefix: int
    gateway: str  # the external network's router
    floating: list[DesiredFloating] = []
    off_limits: list[str] = []  # the hosts' own networks: forwarded traffic never goes there


class DesiredNetwork(BaseModel):
    id: str
    cidr: str
    gateway: str
    vni: int
    mtu: int
    overlay: str
    serve: bool  # this host runs the gateway and DHCP
    peers: list[str]  # underlay addresses of the other hosts that have the network
    remote_ports: list[DesiredRemotePort] = []  # the network's ports on those hosts
    gateway_host: str = ""  # underlay address of the serving host when it is another one
    reservations: list[DesiredReservation]
    metadata: list[DesiredMetadata] = []  # only for the serving host
    external: DesiredExternal | None = None  # only for the serving host


class DesiredVolume(BaseModel):
    """A volume on this host: made if missing, attached to `instance_id`'s guest when set,
    removed once `status` is deleting."""

    id: str
    size_gb: int
    status: str
    instance_id: str | None = None
    image_id: str | None = None
    image_format: str = ""
    image_sha256: str = ""
    port: str = ""  # the hotplug port the API last heard it is on


class MigratingVolume(BaseModel):
    """An attached volume that travels with its server (same id, size and hotplug port)."""

    id: str
    size_gb: int
    port: str = ""  # hp0..: where the source's guest has it (live only)


class DesiredMigration(BaseModel):
    """A migration this host takes part in (control/migrations.py)."""

    id: str
    instance_id: str
    role: Literal["source", "target"]
    phase: str  # preparing | migrating | done | failed
    live: bool
    peer: str  # the other host's underlay address
    port: int = 0  # the target's migration port; 0: not prepared yet
    nbd_port: int = 0  # the target's NBD export of the disk
    instance: DesiredInstance | None = None  # the target's: what to prepare
    volumes: list[MigratingVolume] = []


class DesiredState(BaseModel):
    generation: int
    cloud_id: str  # an agent acts only on the cloud id it first saw
    host_id: str
    address: str
    instances: list[DesiredInstance]
    networks: list[DesiredNetwork]
    # tombstones: instances deleted while this host was down, to tear down if it has them
    deleted: list[str] = []
    # bumped by `nubes gc`: a larger one than the host last carried out removes its leftovers
    gc_request: int = 0
    volumes: list[DesiredVolume] = []
    migrations: list[DesiredMigration] = []


class StepDone(NoNul):
    """A build step as the host saw it end: the operation log shows the host's own clock."""

    name: str = Field(max_length=64)
    at: datetime


class ObservedInstance(NoNul):
    id: str = Field(max_length=64)
    status: Literal["ACTIVE", "SHUTOFF", "ERROR", "DELETED"]
    fault: str = Field(default="", max_length=65536)
    ready: bool = False
    reboot_gen: Count = 0
    rebuild_gen: Count = 0
    resize_gen: Count = 0
    # build steps finished in this pass (for the operation log)
    steps: list[StepDone] = Field(default=[], max_length=64)


class ObservedVolume(NoNul):
    id: str = Field(max_length=64)
    status: Literal["available", "in-use", "error", "deleted"]
    fault: str = Field(default="", max_length=65536)
    port: str = Field(default="", max_length=16)  # the hotplug port of the running guest


class SnapshotFailed(NoNul):
    error: str = Field(max_length=65536)


class ObservedMigration(NoNul):
    id: str = Field(max_length=64)
    # target: prepared (with its ports) | cleaned (after failed); source: completed (switched
    # over) | cleaned (after done); either: failed (with the error)
    state: Literal["prepared", "completed", "failed", "cleaned"]
    port: int = Field(default=0, ge=0, le=65535)
    nbd_port: int = Field(default=0, ge=0, le=65535)
    error: str = Field(default="", max_length=4096)
    total_ms: Count = 0
    downtime_ms: Count = 0


class Report(NoNul):
    instances: list[ObservedInstance]
    volumes: list[ObservedVolume] = Field(default=[], max_length=4096)
    # what nubes made on the host that nothing wants, still there
    leftovers: list[Annotated[str, Field(max_length=255)]] = []
    migrations: list[ObservedMigration] = Field(default=[], max_length=1000)
