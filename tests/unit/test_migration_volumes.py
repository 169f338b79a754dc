"""What a host removes of a migration's volumes: the copies that are not (or no longer) its
own, never a volume its desired state names."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nubes.agent.layout import HostLayout
from nubes.agent.migrations import INCOMING, MigrationReconciler
from nubes.schemas.agent import DesiredMigration, DesiredState, DesiredVolume, MigratingVolume

OWN, COPY, MARKED = (f"{n}" * 8 + "-0000-0000-0000-000000000000" for n in "abc")


def reconciler(tmp_path: Path) -> tuple[MigrationReconciler, HostLayout, list[str]]:
    layout = HostLayout(tmp_path)
    torn: list[str] = []

    def teardown(instance_id: str, taps: list[str]) -> None:
        torn.append(instance_id)
        for f in layout.instance_dir(instance_id).glob("*"):
            f.unlink()

    rec: Any = SimpleNamespace(layout=layout, teardown=teardown)
    return MigrationReconciler(rec=rec, driver=None, guard=False), layout, torn  # type: ignore[arg-type]


def desired(phase: str, role: str, volumes: list[str]) -> DesiredState:
    mig = DesiredMigration(
        id="m1", instance_id="i1", role=role, phase=phase, live=True, peer="10.0.0.1",  # type: ignore[arg-type]
        volumes=[MigratingVolume(id=v, size_gb=1, port="hp0") for v in volumes],
    )  # fmt: skip
    own = DesiredVolume(id=OWN, size_gb=1, status="available")
    return DesiredState(
        generation=1, cloud_id="c", host_id="h", address="10.0.0.2", instances=[],
        networks=[], volumes=[own], migrations=[mig],
    )  # fmt: skip


def files(layout: HostLayout, *ids: str) -> None:
    layout.volumes.mkdir(parents=True, exist_ok=True)
    for v in ids:
        layout.volume(v).write_bytes(b"qcow2")


def test_a_failed_targets_blank_copies_go_and_its_own_volume_stays(tmp_path: Path) -> None:
    mig, layout, torn = reconciler(tmp_path)
    files(layout, OWN, COPY, MARKED)
    layout.instance_dir("i1").mkdir(parents=True)
    # the marker names what the preparation made; the desired state may name less
    (layout.instance_dir("i1") / INCOMING).write_text(json.dumps({"volumes": [MARKED]}))
    observed, _ = mig.converge(desired("failed", "target", [COPY, OWN]))
    assert [o.state for o in observed] == ["cleaned"]
    assert torn == ["i1"]
    assert layout.volume(OWN).exists()  # named by this host's desired state: never removed
    assert not layout.volume(COPY).exists() and not layout.volume(MARKED).exists()


def test_a_done_sources_copies_go(tmp_path: Path) -> None:
    mig, layout, _ = reconciler(tmp_path)
    files(layout, OWN, COPY)
    observed, _ = mig.converge(desired("done", "source", [COPY]))
    assert [o.state for o in observed] == ["cleaned"]
    assert layout.volume(OWN).exists() and not layout.volume(COPY).exists()


def test_a_target_never_overwrites_a_volume_of_its_own(tmp_path: Path) -> None:
    mig, layout, _ = reconciler(tmp_path)
    files(layout, OWN)
    mig._keep = {OWN}
    with pytest.raises(RuntimeError, match="this host's already"):
        mig._blank_volume(OWN, 1)
    assert layout.volume(OWN).read_bytes() == b"qcow2"
