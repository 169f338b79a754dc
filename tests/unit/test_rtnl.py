"""The rtnetlink client's encoding and decoding, and its answer loop, without a kernel."""

from __future__ import annotations

import errno
import struct

import pytest

from nubes.network import rtnl


def test_attributes_are_padded_to_four_bytes() -> None:
    a = rtnl.string(rtnl.IFLA_IFNAME, "br0")  # 4 header + 4 payload ("br0\0")
    assert a == struct.pack("=HH", 8, rtnl.IFLA_IFNAME) + b"br0\0"
    b = rtnl.u8(7, 1)  # 5 bytes, padded to 8, the length field says 5
    assert len(b) == 8 and struct.unpack_from("=H", b)[0] == 5
    n = rtnl.nested(rtnl.IFLA_LINKINFO, rtnl.string(rtnl.IFLA_INFO_KIND, "vxlan"))
    length, kind = struct.unpack_from("=HH", n)
    assert kind == rtnl.IFLA_LINKINFO | rtnl.NLA_NESTED and length == len(n) == 4 + 12
    assert rtnl.be16(15, 4789)[4:6] == b"\x12\xb5"  # the VXLAN port is big-endian


def vxlan_link_body() -> bytes:
    data = (
        rtnl.u32(1, 4242)
        + rtnl.ipv4(4, "10.255.0.11")
        + rtnl.u8(7, 0)
        + rtnl.be16(15, 4789)
        + rtnl.u32(99, 7)  # an attribute nubes does not read
    )
    info = rtnl.string(rtnl.IFLA_INFO_KIND, "vxlan") + rtnl.nested(rtnl.IFLA_INFO_DATA, data)
    return (
        rtnl.ifinfo(index=12, flags=rtnl.IFF_UP)
        + rtnl.string(rtnl.IFLA_IFNAME, "vxnet1")
        + rtnl.u32(rtnl.IFLA_MTU, 1450)
        + rtnl.mac(rtnl.IFLA_ADDRESS, "02:aa:bb:cc:dd:ee")
        + rtnl.u32(rtnl.IFLA_MASTER, 5)
        + rtnl.string(rtnl.IFLA_IFALIAS, "nubes network net-1")
        + rtnl.attr(7, b"\0" * 200)  # stats and the like are skipped
        + rtnl.nested(rtnl.IFLA_LINKINFO, info)
    )


def test_parse_link_reads_what_nubes_uses() -> None:
    msg = rtnl.parse_link(vxlan_link_body())
    assert msg.index == 12 and msg.flags & rtnl.IFF_UP
    assert msg.attrs == {
        "ifname": "vxnet1",
        "mtu": 1450,
        "address": "02:aa:bb:cc:dd:ee",
        "master": 5,
        "ifalias": "nubes network net-1",
        "kind": "vxlan",
        "info": {
            "IFLA_VXLAN_ID": 4242,
            "IFLA_VXLAN_LOCAL": "10.255.0.11",
            "IFLA_VXLAN_LEARNING": 0,
            "IFLA_VXLAN_PORT": 4789,
        },
    }


def test_parse_neigh() -> None:
    body = (
        rtnl.ndmsg(12)
        + rtnl.mac(rtnl.NDA_LLADDR, "52:54:00:aa:00:01")
        + rtnl.ipv4(rtnl.NDA_DST, "10.255.0.12")
    )
    assert rtnl.parse_neigh(body) == rtnl.Neigh(12, "52:54:00:aa:00:01", "10.255.0.12")


class FakeSocket:
    """Answers each send with the queued datagrams."""

    def __init__(self, answers: list[list[tuple[int, int, bytes]]]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        seq = struct.unpack_from("=IHHII", data)[3]
        for datagram in self.answers.pop(0):
            mtype, flags, body = datagram
            msg = struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body
            self.pending.append(msg)

    def recv(self, _size: int) -> bytes:
        return self.pending.pop(0)

    def close(self) -> None:
        pass


def client(answers: list[list[tuple[int, int, bytes]]]) -> tuple[rtnl.Rtnl, FakeSocket]:
    c = rtnl.Rtnl.__new__(rtnl.Rtnl)
    sock = FakeSocket(answers)
    c._sock = sock  # type: ignore[assignment]
    c._seq = 0
    return c, sock


def ack(code: int = 0) -> tuple[int, int, bytes]:
    return (rtnl.NLMSG_ERROR, 0, struct.pack("=i", -code) + b"\0" * 16)


def test_a_get_returns_the_answer_before_the_ack() -> None:
    c, sock = client([[(rtnl.RTM_NEWLINK, 0, vxlan_link_body()), ack()]])
    msg = c.get_link("vxnet1")
    assert msg is not None and msg.attrs["ifname"] == "vxnet1"
    _len, mtype, flags, _seq, _pid = struct.unpack_from("=IHHII", sock.sent[0])
    assert mtype == rtnl.RTM_GETLINK and flags == rtnl.F_REQUEST | rtnl.F_ACK


def test_a_missing_link_is_none_and_other_errors_raise() -> None:
    c, _ = client([[ack(errno.ENODEV)], [ack(errno.EPERM)]])
    assert c.get_link("nope") is None
    with pytest.raises(rtnl.RtnlError) as err:
        c.get_link("nope")
    assert err.value.errno == errno.EPERM


def test_a_dump_collects_every_part_until_done() -> None:
    part = (rtnl.RTM_NEWLINK, rtnl.F_MULTI, vxlan_link_body())
    c, sock = client([[part, part, (rtnl.NLMSG_DONE, rtnl.F_MULTI, b"\0" * 4)]])
    assert [m.index for m in c.dump_links()] == [12, 12]
    flags = struct.unpack_from("=IHHII", sock.sent[0])[2]
    assert flags & rtnl.F_DUMP == rtnl.F_DUMP and not flags & rtnl.F_ACK


def test_fdb_requests() -> None:
    c, sock = client([[ack()], [ack()], [ack()]])
    c.fdb("append", 12, "00:00:00:00:00:00", "10.255.0.12")
    c.fdb("replace", 12, "52:54:00:aa:00:01", "10.255.0.12")
    c.fdb("del", 12, "52:54:00:aa:00:01", "10.255.0.12")
    kinds = [struct.unpack_from("=IHHII", m)[1:3] for m in sock.sent]
    base = rtnl.F_REQUEST | rtnl.F_ACK
    assert kinds == [
        (rtnl.RTM_NEWNEIGH, base | rtnl.F_CREATE | rtnl.F_APPEND),
        (rtnl.RTM_NEWNEIGH, base | rtnl.F_CREATE | rtnl.F_REPLACE),
        (rtnl.RTM_DELNEIGH, base),
    ]
    neigh = rtnl.parse_neigh(sock.sent[1][16:])
    assert neigh == rtnl.Neigh(12, "52:54:00:aa:00:01", "10.255.0.12")
