"""nubes ssh's command line and nubes console's argument handling (no cloud needed)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nubes.cli import console, ssh
from nubes.cli.main import app
from nubes.schemas import resources as s

SERVER = s.Server(
    id="0c7b7c2e-1111-4222-8333-444455556666",
    name="web1",
    status="ACTIVE",
    task_state="",
    host="lab-h1",
    image="debian",
    flavor="m1.small",
    addresses={"net1": ["10.30.0.2"]},
    key_name="k1",
    fault="",
    created_at=datetime(2026, 1, 1),
    launched_at=None,
    ready_at=None,
)


def test_ssh_argv_through_the_lab_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/u")
    argv = ssh.ssh_argv(
        SERVER, "10.30.0.2", "debian", Path("/k"), ["ip", "netns", "exec", "lab-h1"], ["hostname"]
    )
    assert argv[:5] == ["ip", "netns", "exec", "lab-h1", "ssh"]
    assert "StrictHostKeyChecking=accept-new" in argv
    assert "UserKnownHostsFile=/home/u/.ssh/nubes_known_hosts" in argv
    # known hosts are keyed by instance: a reused address never looks like a changed key
    assert f"HostKeyAlias=nubes-{SERVER.id}" in argv
    assert argv[argv.index("-i") + 1] == "/k"
    assert argv[-5:] == ["-l", "debian", "10.30.0.2", "--", "hostname"]


def test_ssh_argv_direct_without_key_or_command() -> None:
    argv = ssh.ssh_argv(SERVER, "10.30.0.2", "root", None, None, [])
    assert argv[0] == "ssh" and "-i" not in argv and "--" not in argv
    assert argv[-3:] == ["-l", "root", "10.30.0.2"]


def test_private_key_only_when_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ssh.private_key("k1") is None
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "nubes-k1").write_text("key")
    assert ssh.private_key("k1") == tmp_path / ".ssh" / "nubes-k1"
    assert ssh.private_key("") is None


def test_console_name_means_attach(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    monkeypatch.setattr(console, "client", lambda: (_ for _ in ()).throw(SystemExit(7)))
    monkeypatch.setattr(console, "open_websocket", lambda path: called.append(path))
    result = CliRunner().invoke(app, ["console", "web1"])
    assert result.exit_code == 7  # it went to `attach web1`, which asked the API first
    help_text = CliRunner().invoke(app, ["console", "--help"]).output
    for sub in ("log", "url", "vnc", "attach"):
        assert sub in help_text


def test_a_request_invalid_before_sending_is_one_line_naming_the_field() -> None:
    result = CliRunner().invoke(
        app, ["server", "create", "bad name!", "--image", "tiny", "--network", "n"]
    )
    assert result.exit_code == 1
    assert "error: name: a hostname: 1 to 63 letters, digits or '-'" in result.output
    assert "Traceback" not in result.output
