"""Agent records: a damaged one says so and why, never reads as a fresh record."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

import pytest

from nubes.agent import records
from nubes.agent.layout import HostLayout, LocalState

ID = "00000000-0000-0000-0000-000000000001"
GOOD = asdict(LocalState(built=True, reboot_gen=3, vnc_password="pw", running_expected=True))


@pytest.fixture
def layout(tmp_path: Path) -> HostLayout:
    layout = HostLayout(tmp_path)
    layout.make()
    layout.instance_dir(ID).mkdir()
    return layout


def write(layout: HostLayout, text: str) -> None:
    layout.record(ID).write_text(text)


def test_round_trip_is_versioned_and_private(layout: HostLayout) -> None:
    layout.save_state(ID, LocalState(**GOOD))
    loaded = layout.load_state(ID)
    assert loaded.exists and loaded.damage == "" and asdict(loaded.state) == GOOD
    assert json.loads(layout.record(ID).read_text())["version"] == records.VERSION
    assert stat.S_IMODE(layout.record(ID).stat().st_mode) == 0o600
    assert [p.name for p in layout.instance_dir(ID).iterdir()] == ["agent.json"]  # no .tmp


def test_missing_record_is_not_damage(layout: HostLayout) -> None:
    loaded = layout.load_state(ID)
    assert not loaded.exists and loaded.damage == "" and not loaded.state.built


def test_record_of_an_older_agent_without_version_reads_as_is(layout: HostLayout) -> None:
    write(layout, json.dumps({k: v for k, v in GOOD.items() if k != "fault"}))
    loaded = layout.load_state(ID)
    assert loaded.damage == "" and loaded.state.built and loaded.state.reboot_gen == 3


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (json.dumps({**GOOD, "disk_bus": "scsi"}), "unknown field disk_bus"),
        (json.dumps({**GOOD, "version": 2}), "written by a newer agent (version 2 > 1)"),
        ("", "empty"),
        (json.dumps(GOOD)[:40], "truncated or invalid JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**GOOD, "reboot_gen": "3"}), "invalid reboot_gen"),
    ],
    ids=["unknown-field", "newer-version", "empty", "truncated", "not-object", "bad-type"],
)
def test_damaged_record_says_why_and_keeps_what_it_read(
    layout: HostLayout, text: str, why: str
) -> None:
    write(layout, text)
    loaded = layout.load_state(ID)
    assert loaded.exists and loaded.damage == why
    if text.startswith("{") and text.endswith("}"):  # readable: the fields it held are kept
        assert loaded.state.built and loaded.state.vnc_password == "pw"


def test_unreadable_file_is_damage(layout: HostLayout) -> None:
    layout.record(ID).mkdir()  # reading it fails with EISDIR
    loaded = layout.load_state(ID)
    assert loaded.exists and loaded.damage.startswith("unreadable")


def test_write_fsyncs_file_then_directory(
    layout: HostLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        synced.append("replace")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    layout.save_state(ID, LocalState(built=True))
    assert synced == ["file", "replace", "dir"]


def test_keep_copy_keeps_the_damaged_bytes(layout: HostLayout) -> None:
    write(layout, '{"version": 9, "future": [1]}')
    name = records.keep_copy(layout.record(ID))
    assert (layout.instance_dir(ID) / name).read_text() == '{"version": 9, "future": [1]}'
    assert name.startswith("agent.json.damaged-")
