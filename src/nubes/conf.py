"""All settings in one place. Every field can be set with an NUBES_<NAME> environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NUBES_", extra="ignore")

    state_dir: Path = Path("/var/lib/nubes")
    database_url: str = ""  # empty: SQLite file under state_dir
    api_host: str = "127.0.0.1"
    api_port: int = 8774
    api_url: str = ""  # how clients reach the API; empty: the unix socket under state_dir
    # more addresses the HTTPS listener binds (comma-separated), e.g. the address other
    # machines reach this one at; the server certificate names each of them
    api_listen: str = ""
    api_tls_names: str = ""  # more DNS names or addresses for the server certificate

    # drivers: "qemu" and "linuxbridge" or "ovs" for real hosts, "fake" for functional tests
    hypervisor_driver: str = "qemu"
    network_driver: str = "linuxbridge"

    qemu_binary: str = "qemu-system-x86_64"
    # Guests run as this unprivileged user (QEMU -runas, -sandbox on). The default is used when
    # the user exists (`make deps` creates it); a user set explicitly must exist. "" = the agent's
    # own user (root): only for machines where the user cannot be created.
    qemu_user: str = "nubes-qemu"

    host_name: str = ""  # this agent's host; "" = the machine's hostname
    host_address: str = ""  # underlay address other hosts reach this one at
    # where the agent serves consoles to the API, on host_address (127.0.0.1 without one);
    # 0 = a free port (tests; the port is registered either way)
    agent_console_port: int = 8775

    # Nova's report_interval and service_down_time: 1,000 hosts at a 2 s heartbeat would be
    # 500 requests a second (bench/control_plane.py); the lab tests set 2 s and 6 s
    heartbeat_interval: float = 10.0
    host_down_after: float = 60.0
    # the agent's pass over its host (a guest that died is reported within one); only what
    # changed is sent, so an idle host costs the API a heartbeat and one long-poll per timeout
    sync_interval: float = 2.0
    poll_timeout: float = 55.0  # a long-poll with no change answers after this (at most 60)
    # the agent re-reads its whole desired state and re-sends its whole report at least this
    # often, changed or not: what a bug or a lost answer missed heals within it
    resync_interval: float = 120.0
    operation_timeout: float = 900.0  # an operation still running after this fails

    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 2.0
    scheduler_weigher: str = "spread"  # spread | pack

    # per project: a clear 409 past these (Nova's, Neutron's defaults, where they have them);
    # -1 is unlimited; `nubes quota set` gives a project its own (control/quotas.py)
    quota_servers: int = Field(default=10, ge=-1)
    quota_vcpus: int = Field(default=20, ge=-1)
    quota_ram_mb: int = Field(default=51200, ge=-1)
    quota_images: int = Field(default=100, ge=-1)
    quota_volumes: int = Field(default=10, ge=-1)
    quota_networks: int = Field(default=100, ge=-1)
    quota_security_groups: int = Field(default=10, ge=-1)
    quota_security_group_rules: int = Field(default=100, ge=-1)
    quota_floating_ips: int = Field(default=50, ge=-1)
    max_image_virtual_size_gb: int = Field(default=2048, description="larger images are refused")
    # a request's body, read before authentication: larger ones get 413 (uploads excepted)
    max_body_bytes: int = Field(default=4 << 20, ge=1024)
    # an image upload's data, streamed to disk after authentication (and the disk's free space)
    max_upload_bytes: int = Field(default=64 << 30, ge=1)
    allow_private_image_urls: bool = False
    max_container_image_bytes: int = Field(
        default=4 << 30, ge=1, description="file contents a container image may hold, unpacked"
    )
    container_allow_setuid: bool = Field(
        default=False, description="accept container images with setuid/setgid files"
    )
    # imports from URLs (api/url_imports.py): downloading at once per API process, waiting
    # beyond those (more are refused, 503), and the total time of one
    url_imports_at_once: int = Field(default=4, ge=1)
    url_imports_waiting: int = Field(default=16, ge=0)
    url_import_timeout: float = Field(default=3600.0, gt=0)

    # the OpenStack-compatible API (nubes/openstack/): the base URL its catalog and version
    # documents name ("": https://<api_host>:<api_port>), and how long a Keystone token lives
    openstack_public_url: str = ""
    openstack_token_ttl: float = Field(default=3600.0, gt=0)

    # GET /v1/events: how long server events are kept for clients that resume (seconds)
    events_retention: float = Field(default=7 * 86400.0, gt=0)

    # GET /metrics without a token (a scraper on a trusted network); else the admin token
    metrics_open: bool = False

    # how long a request waits for a locked or unreachable database before answering 503
    db_timeout: float = 30.0

    # TEST ONLY, fault injection (see nubes/faults.py); never set these in production.
    # The agent exits as kill -9 would right after this build step: disk | seed | ports | qemu
    fault_crash_after: str = ""
    # The API exits as kill -9 would at: create-before-commit | create-after-commit |
    # delete-after-commit
    fault_api_crash: str = ""

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'nubes.db'}"

    @property
    def api_socket(self) -> Path:
        return self.state_dir / "api.sock"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def listen_addresses(self) -> list[str]:
        extra = [a.strip() for a in self.api_listen.split(",") if a.strip()]
        return list(dict.fromkeys([self.api_host, *extra]))

    @property
    def public_url(self) -> str:
        """The OpenStack layer's base URL, without a trailing slash."""
        if self.openstack_public_url:
            return self.openstack_public_url.rstrip("/")
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"https://{host}:{self.api_port}"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
