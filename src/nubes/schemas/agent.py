"""What agents and the API say to each other."""

from __future__ import annotations

from pydantic import BaseModel


class HostRegister(BaseModel):
    name: str
    address: str = ""
    accel: str
    accel_note: str = ""
    state_dir: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    overlays: str = "vxlan"  # comma-separated overlay kinds the host's kernel has


class DesiredPort(BaseModel):
    id: str
    network_id: str
    mac: str
    ip: str
    prefix: int
    gateway: str
    mtu: int


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


class DesiredState(BaseModel):
    generation: int
    host_id: str
    address: str
    instances: list[DesiredInstance]
    networks: list[DesiredNetwork]


class ObservedInstance(BaseModel):
    id: str
    status: str  # ACTIVE | SHUTOFF | ERROR | DELETED
    fault: str = ""
    ready: bool = False
    reboot_gen: int = 0
    steps: list[str] = []  # build steps finished in this pass (for the operation log)


class Report(BaseModel):
    instances: list[ObservedInstance]
    leftovers: list[str] = []  # what nubes made on the host that nothing wants, still there
