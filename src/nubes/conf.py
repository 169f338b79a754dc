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

    # drivers: "qemu"/"linuxbridge" for real hosts, "fake" for functional tests
    hypervisor_driver: str = "qemu"
    network_driver: str = "linuxbridge"

    qemu_binary: str = "qemu-system-x86_64"
    qemu_user: str = ""  # run guests as this unprivileged user ("" = the agent's user)
    uplink: str = ""  # NAT egress interface; off unless set

    host_name: str = ""  # this agent's host; "" = the machine's hostname
    host_address: str = ""  # underlay address other hosts reach this one at

    heartbeat_interval: float = 2.0
    host_down_after: float = 15.0
    sync_interval: float = 2.0
    operation_timeout: float = 900.0  # an operation still running after this fails

    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 2.0
    scheduler_weigher: str = "spread"  # spread | pack

    max_image_virtual_size_gb: int = Field(default=2048, description="larger images are refused")
    allow_private_image_urls: bool = False

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'nubes.db'}"

    @property
    def api_socket(self) -> Path:
        return self.state_dir / "api.sock"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
