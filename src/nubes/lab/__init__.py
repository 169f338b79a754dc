"""Network-namespace hosts for `nubes lab` and the multi-host tests."""

from nubes.lab.lab import HostStatus, Lab, LabError, LabHost, LabStatus

__all__ = ["HostStatus", "Lab", "LabError", "LabHost", "LabStatus"]
