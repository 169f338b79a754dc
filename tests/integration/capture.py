"""Frames seen on an interface inside a network namespace: an AF_PACKET socket, as tcpdump uses,
opened from a thread that stepped into the namespace (the socket stays bound there)."""

from __future__ import annotations

import socket
import struct
import threading

from nubes.network import netns

_ETH_P_ALL = 0x0003
_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, _PACKET_MR_PROMISC = 263, 1, 1


class Capture:
    """promisc: every frame the interface carries, as `tcpdump -i` sees it (on a bridge, also
    those forwarded between its ports). Otherwise only frames addressed to the interface:
    unicast an underlay switch floods to every port is left out."""

    def __init__(self, ns: str, ifname: str, promisc: bool = False) -> None:
        self.frames: list[bytes] = []
        self.promisc = promisc
        self._stop = threading.Event()
        with netns.inside(ns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            self._sock.bind((ifname, 0))
            if promisc:
                index = socket.if_nametoindex(ifname)
                mreq = struct.pack("iHH8s", index, _PACKET_MR_PROMISC, 0, b"")
                self._sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, mreq)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.promisc or addr[2] != socket.PACKET_OTHERHOST:
                self.frames.append(data)

    def close(self) -> list[bytes]:
        """Stop capturing (this also ends promiscuous mode); the frames seen."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        return self.frames


def from_macs(frames: list[bytes], macs: set[str]) -> list[bytes]:
    """Frames whose Ethernet source is one of macs."""
    raw = {bytes.fromhex(m.replace(":", "")) for m in macs}
    return [f for f in frames if f[6:12] in raw]


def mentioning_macs(frames: list[bytes], macs: set[str]) -> list[bytes]:
    """Frames that carry one of macs anywhere (source, destination, ARP payload...)."""
    raw = [bytes.fromhex(m.replace(":", "")) for m in macs]
    return [f for f in frames if any(r in f for r in raw)]
