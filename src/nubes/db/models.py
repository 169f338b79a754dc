"""SQLAlchemy models: the desired and observed state of the cloud."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value rows: the cloud's id, the `nubes gc` request count (each host has its own
    generation, `hosts.generation`)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    role: Mapped[str] = mapped_column(String(16))  # admin | member | host
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # names compare by code point on both databases (PostgreSQL's default collation may follow a
    # locale, "web-2" after "web10"), as Python sorts them: the scheduler's ties go by name
    name: Mapped[str] = mapped_column(
        String(64).with_variant(String(64, collation="C"), "postgresql"), unique=True
    )
    address: Mapped[str] = mapped_column(String(64), default="")
    accel: Mapped[str] = mapped_column(String(16), default="tcg")
    accel_note: Mapped[str] = mapped_column(String(255), default="")
    state_dir: Mapped[str] = mapped_column(String(1024), default="")
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    ram_mb: Mapped[int] = mapped_column(Integer, default=0)
    disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    overlays: Mapped[str] = mapped_column(String(64), default="vxlan")  # what the kernel has
    # linuxbridge | ovs | fake: what its agent runs (a host reports it as it registers)
    network_driver: Mapped[str] = mapped_column(
        String(16), default="linuxbridge", server_default="linuxbridge"
    )
    used_vcpus: Mapped[int] = mapped_column(Integer, default=0)
    used_ram_mb: Mapped[int] = mapped_column(Integer, default=0)
    used_disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_heartbeat: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    joined_via: Mapped[str] = mapped_column(String(16), default="")  # join-token | admin
    agent_version: Mapped[str] = mapped_column(String(32), default="")
    # bumped with every change this host's agent must see (its long-poll waits on it alone)
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    console_port: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the IPv4 networks it has addresses in, as it registered them (comma-separated)
    networks: Mapped[str] = mapped_column(String(2048), default="", server_default="")
    # set by `host evacuate`: its credential authorizes nothing from then on (api/deps.py)
    fenced_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # what it runs instances with (comma-separated): qemu, and runc where containers can run
    runtimes: Mapped[str] = mapped_column(String(64), default="qemu", server_default="qemu")


# The scheduler's order (free RAM at RAM ratio 1, then name), one index per weigher: the
# database walks it and stops after LIMIT hosts instead of sorting them all (migration 0005).
Index("ix_hosts_most_free_ram", Host.used_ram_mb - Host.ram_mb, Host.name)  # spread
Index("ix_hosts_least_free_ram", Host.ram_mb - Host.used_ram_mb, Host.name)  # pack


class JoinToken(Base):
    """A one-time, expiring token an admin makes for a new machine; only its hash is kept."""

    __tablename__ = "join_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    used_by: Mapped[str] = mapped_column(String(64), default="")  # the host that joined with it
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class HostCredential(Base):
    """What a joined host authenticates with: bound to that host alone, revocable, rotatable."""

    __tablename__ = "host_credentials"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(64))
    disk_format: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|active|error
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    kernel_sha256: Mapped[str] = mapped_column(String(64), default="")
    initrd_sha256: Mapped[str] = mapped_column(String(64), default="")
    cmdline: Mapped[str] = mapped_column(String(1024), default="")
    default_user: Mapped[str] = mapped_column(String(32), default="")
    ready_pattern: Mapped[str] = mapped_column(String(255), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Glance's custom properties (JSON object of strings), set through the OpenStack API
    properties: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    # a snapshot: the server whose disk its host copies and uploads while the image is queued
    snapshot_of: Mapped[str | None] = mapped_column(String(36), nullable=True)


class Flavor(Base):
    __tablename__ = "flavors"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)


class Keypair(Base):
    __tablename__ = "keypairs"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Network(Base):
    __tablename__ = "networks"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(64))
    cidr: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str] = mapped_column(String(64))
    vni: Mapped[int] = mapped_column(Integer, unique=True)
    overlay: Mapped[str] = mapped_column(String(16), default="vxlan")
    mtu: Mapped[int] = mapped_column(Integer, default=1450)
    dhcp_host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # the default of its ports (a server's create may turn it off for its own)
    port_security: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # a tenant network reaches the external network through NAT on its gateway host
    egress: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # an external network (admin's): no servers on it; `uplink` is the interface each host
    # reaches it through, and its addresses are handed out as routers' and floating IPs
    external: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    uplink: Mapped[str] = mapped_column(String(15), default="", server_default="")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        Index(
            "uq_instances_live_name",
            "project_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # a host's live instances and recent tombstones, read on every desired state: without
        # it each agent's fetch scanned every instance ever deleted (bench/control_plane.py)
        Index("ix_instances_host_deleted", "host_id", "deleted_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    flavor_id: Mapped[str] = mapped_column(ForeignKey("flavors.id"))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="BUILD")
    task_state: Mapped[str] = mapped_column(String(16), default="")
    desired_state: Mapped[str] = mapped_column(String(16), default="running")
    reboot_gen: Mapped[int] = mapped_column(Integer, default=0)
    hard_reboot: Mapped[bool] = mapped_column(Boolean, default=False)
    fault: Mapped[str] = mapped_column(Text, default="")
    key_name: Mapped[str] = mapped_column(String(64), default="")
    public_key: Mapped[str] = mapped_column(Text, default="")
    user_data: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    launched_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("server_groups.id"), nullable=True)
    # a server of an installer ISO boots the CD until `server eject` (then its disk, for good)
    cdrom_ejected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # ... or until its installer first reboots or powers off (api/routes/agent.py ejects it)
    eject_after_install: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # bumped by a rebuild (a new disk) and a resize (cold: new size): the agent acts on a
    # generation larger than the one it last carried out, as with reboot_gen
    rebuild_gen: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resize_gen: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ServerGroup(Base):
    """Affinity policy for the instances that name it."""

    __tablename__ = "server_groups"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(32))  # affinity|anti-affinity|soft-*
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Operation(Base):
    """One mutating request being carried out, with its steps (JSON list) and its holder."""

    __tablename__ = "operations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    instance_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))  # create|delete|start|stop|reboot
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|done|failed
    holder: Mapped[str] = mapped_column(String(64), default="")  # api | host name
    steps: Mapped[str] = mapped_column(Text, default="[]")
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("project_id", "key"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Port(Base):
    __tablename__ = "ports"
    __table_args__ = (UniqueConstraint("network_id", "ip"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    ip: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    position: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # NIC order
    port_security: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # allowed address pairs, JSON: [{"ip": "10.0.0.0/24", "mac": null}, ...]
    allowed_addresses: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")


class SecurityGroup(Base):
    """Neutron's semantics: a port's groups' rules say what it may start (egress) and what may
    reach it (ingress); replies to either come back (stateful)."""

    __tablename__ = "security_groups"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SecurityGroupRule(Base):
    __tablename__ = "security_group_rules"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # ingress | egress
    protocol: Mapped[str] = mapped_column(String(8), default="")  # "" any, tcp, udp, icmp
    port_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    remote_cidr: Mapped[str] = mapped_column(String(64), default="")  # "" anywhere
    remote_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("security_groups.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class InstanceSecurityGroup(Base):
    """The groups of a server (all its ports with port security)."""

    __tablename__ = "instance_security_groups"
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), primary_key=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id"), primary_key=True)


class ExternalAddress(Base):
    """An address of an external network: a tenant network's router address (its egress NAT)
    or a project's floating IP (1:1 NAT to a port, when associated)."""

    __tablename__ = "external_addresses"
    __table_args__ = (UniqueConstraint("external_id", "address"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    external_id: Mapped[str] = mapped_column(ForeignKey("networks.id"))
    address: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    kind: Mapped[str] = mapped_column(String(8))  # router | floating
    router_of: Mapped[str | None] = mapped_column(
        ForeignKey("networks.id"), nullable=True, unique=True
    )
    port_id: Mapped[str | None] = mapped_column(ForeignKey("ports.id"), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OsToken(Base):
    """A Keystone token the OpenStack layer issued (nubes/openstack/): only its hash is kept;
    it speaks for one project with the role of the credential it was issued for, until it
    expires."""

    __tablename__ = "os_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    role: Mapped[str] = mapped_column(String(16))  # admin | member
    methods: Mapped[str] = mapped_column(String(64), default="")  # comma-separated
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OsAppCredential(Base):
    """A Keystone application credential: its id and secret authenticate as its project
    (`nubes openstack clouds-yaml` makes one); only the secret's hash is kept."""

    __tablename__ = "os_app_credentials"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), default="")
    secret_sha256: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OsNetwork(Base):
    """What Neutron knows of a network that nubes does not: a network created through the
    OpenStack API lives only here until its subnet arrives (a nubes network needs a CIDR);
    the subnet then makes the nubes network with this same id, and its name stays here."""

    __tablename__ = "os_networks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    subnet_name: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: pending
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ServerEvent(Base):
    """A server's state change, for `GET /v1/events` (control/events.py): ids only grow
    (AUTOINCREMENT on SQLite, so an emptied table never hands out an old id again)."""

    __tablename__ = "server_events"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    project_id: Mapped[str] = mapped_column(String(36), index=True)
    server_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # create | update | delete
    status: Mapped[str] = mapped_column(String(16))
    task_state: Mapped[str] = mapped_column(String(16), default="")
    ready: Mapped[bool] = mapped_column(Boolean, default=False)  # the guest said it is ready
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class ProjectQuota(Base):
    """A project's own limit for one resource (control/quotas.py); without a row, the default
    setting applies. -1: unlimited."""

    __tablename__ = "project_quotas"
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    resource: Mapped[str] = mapped_column(String(32), primary_key=True)
    limit: Mapped[int] = mapped_column(BigInteger)


class Volume(Base):
    """A qcow2 disk on one host, attached hot to at most one server of that host.
    status: creating | available | attaching | in-use | detaching | deleting | error."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(String(64))
    size_gb: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[str | None] = mapped_column(ForeignKey("images.id"), nullable=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True, index=True)
    # the server it is (to be) attached to; None: detached
    instance_id: Mapped[str | None] = mapped_column(
        ForeignKey("instances.id"), nullable=True, index=True
    )
    status: Mapped[str] = mapped_column(String(16), default="creating")
    fault: Mapped[str] = mapped_column(Text, default="")
    # the hotplug port its host reports it on (a live migration's target must use the same)
    port: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Migration(Base):
    """A server moving between hosts that share no disk (control/migrations.py). Each agent
    converges on its phase: preparing (the target builds an incoming guest and reports its
    ports) → migrating (the source mirrors the disk and memory) → done (the instance is the
    target's) or failed (the target removes what it prepared)."""

    __tablename__ = "migrations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    source_host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"))
    target_host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"))
    live: Mapped[bool] = mapped_column(Boolean, default=True)
    phase: Mapped[str] = mapped_column(String(16), default="preparing")
    port: Mapped[int] = mapped_column(Integer, default=0)  # the target's migration port
    nbd_port: Mapped[int] = mapped_column(Integer, default=0)  # the target's disk export
    error: Mapped[str] = mapped_column(Text, default="")
    source_cleaned: Mapped[bool] = mapped_column(Boolean, default=False)
    target_cleaned: Mapped[bool] = mapped_column(Boolean, default=False)
    total_ms: Mapped[int] = mapped_column(Integer, default=0)
    downtime_ms: Mapped[int] = mapped_column(Integer, default=0)
    # JSON list of the attached volumes that travel with it: [{id, size_gb, port}]
    volumes: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
