"""Wire models: <Res>Create for requests, <Res> for responses."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from nubes.schemas.common import Hostname, Name, NoNul


class Model(NoNul):
    model_config = ConfigDict(extra="forbid")


class FlavorCreate(Model):
    name: Name
    vcpus: int = Field(ge=1, le=64)
    ram_mb: int = Field(ge=64, le=1024 * 1024)
    disk_gb: int = Field(ge=1, le=16384)


class Flavor(Model):
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int


class KeypairCreate(Model):
    name: Name
    public_key: str | None = Field(
        default=None, max_length=16384, description="OpenSSH public key; omit to generate one"
    )


class Keypair(Model):
    id: str
    name: str
    fingerprint: str
    public_key: str
    private_key: str | None = None  # only in the answer that generated it
    created_at: datetime


class NetworkCreate(Model):
    name: Name
    cidr: str = Field(max_length=64, examples=["10.20.0.0/24"])
    type: Literal["vxlan", "geneve"] | None = None
    vni: int | None = Field(default=None, ge=1, le=16777215, description="admin only")
    port_security: bool = Field(default=True, description="the default of its ports")
    egress: bool = Field(default=True, description="reach the external network through NAT")
    external: bool = Field(default=False, description="admin: an external network")
    uplink: str | None = Field(
        default=None,
        max_length=15,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="external: each host's interface to it",
    )
    gateway: str | None = Field(
        default=None, max_length=15, description="external: its router (default: the first address)"
    )


class Network(Model):
    id: str
    name: str
    cidr: str
    gateway: str
    type: str
    vni: int
    mtu: int
    gateway_host: str | None = None  # the host serving its gateway, DHCP and NAT
    port_security: bool = True
    egress: bool = True
    external: bool = False
    uplink: str = ""
    router_ip: str | None = None  # its egress address on the external network
    note: str = ""  # e.g. why the overlay is not the one asked for
    created_at: datetime


class ImageCreate(Model):
    name: Name
    # iso: an installer CD; its servers boot it beside a blank disk (`server eject` ends that);
    # oci-archive, docker-archive (what podman/docker save write) and rootfs make a container
    # image, stored as rootfs
    disk_format: Literal["qcow2", "raw", "iso", "oci-archive", "docker-archive", "rootfs"] = "qcow2"
    url: str | None = Field(default=None, max_length=2048)
    cmdline: str = Field(default="", max_length=1024, description="kernel command line")
    default_user: str = Field(default="", max_length=32, pattern=r"^([a-z_][a-z0-9_-]{0,31})?$")
    ready_pattern: str = Field(default="", max_length=255)


class Image(Model):
    id: str
    name: str
    disk_format: str
    kind: Literal["vm", "container"] = "vm"
    status: str
    size: int
    virtual_size: int
    sha256: str
    kernel: bool
    initrd: bool
    cmdline: str
    default_user: str
    ready_pattern: str
    error: str
    created_at: datetime


MAX_NICS = 8


class NicRequest(Model):
    """One NIC: a network, and optionally its address and MAC (otherwise allocated)."""

    network: str = Field(min_length=1, max_length=64)
    ip: str | None = Field(default=None, max_length=15, description="a free address of it")
    mac: str | None = Field(default=None, max_length=17, description="unicast, e.g. 52:54:00:…")


class AllowedAddress(Model):
    """An allowed address pair: the port may also send from these addresses (and MAC)."""

    ip: str = Field(min_length=7, max_length=18, description="an address or CIDR")
    mac: str | None = Field(default=None, max_length=17, description="default: the port's")


class ServerCreate(Model):
    name: Hostname
    image: str = Field(min_length=1, max_length=64)
    flavor: str = Field(min_length=1, max_length=64)
    network: str | None = Field(default=None, min_length=1, max_length=64, description="one NIC")
    networks: list[NicRequest] = Field(
        default_factory=list, max_length=MAX_NICS, description="NICs, in order (or `network`)"
    )
    port_security: bool = Field(
        default=True, description="anti-spoofing and security groups on its ports"
    )
    allowed_addresses: list[AllowedAddress] = Field(default_factory=list, max_length=16)
    security_groups: list[str] = Field(
        default_factory=list, max_length=10, description="default: the project's `default`"
    )
    key_name: str | None = Field(default=None, max_length=64)
    user_data: str | None = Field(default=None, max_length=65536)
    host: str | None = Field(default=None, max_length=64, description="admin only")
    group: str | None = Field(default=None, max_length=64, description="server group")
    eject_after_install: bool = Field(
        default=False,
        description="installer ISOs: the installer's first reboot or poweroff ejects the CD "
        "and boots the disk",
    )


class ServerNic(Model):
    network: str
    ip: str
    mac: str
    port_security: bool = True
    allowed_addresses: list[AllowedAddress] = []


class Server(Model):
    id: str
    name: str
    status: str  # BUILD|ACTIVE|SHUTOFF|ERROR|DELETED, or UNKNOWN while its host is down
    task_state: str
    host: str | None
    image: str
    flavor: str
    kind: Literal["vm", "container"] = "vm"  # container: its image is a rootfs, run by runc
    group: str | None = None
    addresses: dict[str, list[str]]
    nics: list[ServerNic] = []
    security_groups: list[str] = []
    key_name: str
    fault: str
    created_at: datetime
    launched_at: datetime | None
    ready_at: datetime | None
    cdrom: bool = False  # an installer ISO is in its CD drive (until `server eject`)


class Evacuation(Model):
    """What `host evacuate` did: the host is fenced; servers moved (id -> new host) and those
    no host had room for (id -> why; they stay, and another evacuate tries them again)."""

    host: str
    fenced: bool
    moved: dict[str, str]
    failed: dict[str, str]
    # the host's volumes, lost with it: error and detached from now on (names)
    volumes_lost: list[str] = []


class ServerAction(Model):
    action: Literal["start", "stop", "reboot", "eject"]
    hard: bool = False


class MigrateRequest(Model):
    host: str | None = Field(
        default=None, max_length=64, description="target host; default: the scheduler's choice"
    )
    live: bool = Field(default=False, description="keep the guest running (no reboot)")


class Migration(Model):
    id: str
    server: str  # the server's id
    source: str  # host names
    target: str
    live: bool
    phase: str  # preparing | migrating | done | failed
    error: str
    total_ms: int
    downtime_ms: int
    created_at: datetime
    updated_at: datetime


class Host(Model):
    id: str
    name: str
    state: Literal["up", "down"]
    enabled: bool
    address: str
    accel: str
    accel_note: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    used_vcpus: int
    used_ram_mb: int
    used_disk_gb: int
    instances: int
    last_heartbeat: datetime | None
    joined_via: str = ""  # join-token | admin
    agent_version: str = ""
    network_driver: str = ""  # linuxbridge | ovs
    overlays: str = ""  # comma-separated: what its networks can use
    fenced: bool = False  # evacuated: its credential authorizes nothing (`host evacuate`)
    runtimes: str = ""  # comma-separated: qemu, runc (containers)


class OperationStep(Model):
    step: str
    state: str
    at: str


class Operation(Model):
    id: str
    kind: str
    server_id: str | None
    status: str  # running | done | failed | superseded
    holder: str  # "api", or the host carrying it out
    steps: list[OperationStep]
    error: str
    created_at: datetime
    updated_at: datetime


class GcReport(Model):
    hosts: dict[str, list[str]]  # per host: what nubes made there that nothing wants
    database: list[str]  # records that disagree (orphan ports, usage != sum of instances)
    repaired: list[str] = []


class ProjectCreate(Model):
    name: Name


class Project(Model):
    id: str
    name: str
    created_at: datetime


class ProjectCreated(Project):
    token: str = Field(description="a member token, shown only in this answer")


GroupPolicy = Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


class GroupCreate(Model):
    name: Name
    policy: GroupPolicy


class Group(Model):
    id: str
    name: str
    policy: str
    members: list[str]  # live servers, by name
    hosts: list[str]  # the hosts they run on
    created_at: datetime


class FilterResult(Model):
    name: str
    passed: bool
    reason: str


class HostVerdict(Model):
    host: str
    passed: bool
    weight: float | None  # None: failed a filter
    filters: list[FilterResult]


class Explanation(Model):
    """The scheduler's table for one create: every host, every filter, the weights."""

    chosen: str | None  # the host a create would try first
    filters: list[str]
    weighers: list[str]  # "name xmultiplier"
    hosts: list[HostVerdict]  # best first


class SecurityGroupCreate(Model):
    name: Name
    description: str = Field(default="", max_length=255)


class SecurityGroupRuleCreate(Model):
    direction: Literal["ingress", "egress"]
    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    port_min: int | None = Field(default=None, ge=1, le=65535)
    port_max: int | None = Field(default=None, ge=1, le=65535, description="default: port_min")
    remote_ip: str | None = Field(default=None, max_length=18, description="a CIDR")
    remote_group: str | None = Field(default=None, max_length=64, description="a group's members")


class SecurityGroupRule(Model):
    id: str
    direction: str
    protocol: str
    port_min: int | None = None
    port_max: int | None = None
    remote_ip: str | None = None
    remote_group: str | None = None


class SecurityGroup(Model):
    id: str
    name: str
    description: str = ""
    rules: list[SecurityGroupRule] = []
    created_at: datetime


class ServerSecurityGroup(Model):
    group: str = Field(min_length=1, max_length=64)


class FloatingIpCreate(Model):
    server: str | None = Field(default=None, max_length=64, description="associate at once")


class FloatingIpAssociate(Model):
    server: str = Field(min_length=1, max_length=64)


class FloatingIp(Model):
    id: str
    address: str
    network: str  # the external network
    server: str | None = None
    fixed_ip: str | None = None
    created_at: datetime
