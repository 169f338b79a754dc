"""nubes: a small IaaS compute service on QEMU."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nubes")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
