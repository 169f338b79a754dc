"""The client's server-sent events parser (WHATWG rules, the subset nubes' stream uses)."""

from __future__ import annotations

from nubes.client.sse import Message, parse


def test_blocks_ids_comments_and_multiline_data() -> None:
    lines = [
        "retry: 1000",
        "id: 7",
        "",
        ": keepalive",
        "",
        "id: 8",
        "event: server",
        'data: {"a":',
        "data: 1}",
        "",
        "data:no space",
        "",
        "",  # an empty block dispatches nothing
    ]
    assert list(parse(lines)) == [
        Message("7", "message", ""),
        Message(None, "message", ""),
        Message("8", "server", '{"a":\n1}'),
        Message(None, "message", "no space"),
    ]


def test_an_id_with_nul_is_ignored_and_an_unended_block_is_not_dispatched() -> None:
    assert list(parse(["id: 1\0", "data: x", "", "data: cut"])) == [Message(None, "message", "x")]
