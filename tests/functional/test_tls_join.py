"""The real `nubes-api` process over HTTPS and `nubes host join` against it, as on a second
machine: the CA pinned by the token, plain HTTP refused, a server of another CA refused, and an
agent that holds its credential in a 0600 file, not in its environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from nubes import tls
from nubes.client import ApiError, NubesClient, fetch_pinned_ca


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningApi:
    state: Path
    url: str
    admin: NubesClient
    proc: subprocess.Popen[bytes]

    @property
    def ca_pem(self) -> bytes:
        return (self.state / "tls" / "ca.pem").read_bytes()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUBES_")}
    env.update(extra)
    return env


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningApi]:
    state = tmp_path / "api"
    port = free_port()
    env = _env(NUBES_STATE_DIR=str(state), NUBES_API_PORT=str(port))
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nubes.api.server"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while not (state / "api.sock").exists() or not (state / "client.json").exists():
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        token = json.loads((state / "client.json").read_text())["token"]
        admin = NubesClient(f"unix://{state / 'api.sock'}", token)
        url = f"https://127.0.0.1:{port}"
        ca = (state / "tls" / "ca.pem").read_bytes()
        while True:  # the TCP listener may come up a moment after the socket
            try:
                with NubesClient(url, token, ca_pem=ca) as remote:
                    remote.request("GET", "/v1")
                break
            except ApiError:
                assert time.monotonic() < deadline, "the HTTPS listener did not start"
                time.sleep(0.1)
        yield RunningApi(state, url, admin, proc)
        admin.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def test_https_with_the_cloud_ca_and_nothing_else(api: RunningApi, tmp_path: Path) -> None:
    token = json.loads((api.state / "client.json").read_text())["token"]
    with NubesClient(api.url, token, ca_pem=api.ca_pem) as remote:
        assert [f.name for f in remote.flavors()][:1] == ["m1.tiny"]
    # plain HTTP on the TCP port gets no answer
    with pytest.raises(httpx.HTTPError):
        httpx.get(api.url.replace("https://", "http://") + "/v1", timeout=5)
    # a client that trusts another CA refuses this server
    other = tls.make_ca(tmp_path / "other-ca").read_bytes()
    with NubesClient(api.url, token, ca_pem=other) as fooled, pytest.raises(ApiError) as exc:
        fooled.request("GET", "/v1")
    assert "CERTIFICATE_VERIFY_FAILED" in exc.value.detail
    # and the system's CAs do not vouch for it either
    with pytest.raises(httpx.ConnectError):
        httpx.get(api.url + "/v1", timeout=5)


def test_join_pins_the_ca_of_its_token(api: RunningApi, tmp_path: Path) -> None:
    made = api.admin.create_join_token(600)
    assert made.ca_sha256 == tls.fingerprint(api.ca_pem) and made.token.endswith(made.ca_sha256)
    assert made.command == f"nubes host join {api.url} --token {made.token}"
    other = tls.fingerprint(tls.make_ca(tmp_path / "other").read_bytes())
    with pytest.raises(ApiError) as exc:
        fetch_pinned_ca(api.url, other)
    assert "refusing to join" in exc.value.detail
    assert fetch_pinned_ca(api.url, made.ca_sha256) == api.ca_pem
    # the same through the CLI: a token that pins another CA joins nothing
    secret = made.token.split(".")[0]
    host_state = tmp_path / "host"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "nubes.cli",
            "host",
            "join",
            api.url,
            "--token",
            f"{secret}.{other}",
        ],
        env=_env(NUBES_STATE_DIR=str(host_state)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode != 0 and "refusing to join" in cli.stderr + cli.stdout
    assert not list(host_state.glob("hosts/*/identity.json"))
    assert {h.name for h in api.admin.hosts()} == set()  # and the token was not spent
    assert api.admin.create_join_token(600)  # (a fresh token still works below)


def test_host_join_runs_an_agent_that_holds_no_secret_in_its_environment(
    api: RunningApi, tmp_path: Path
) -> None:
    token = api.admin.create_join_token(600).token
    host_state = tmp_path / "host"
    env = _env(
        NUBES_STATE_DIR=str(host_state),
        NUBES_HYPERVISOR_DRIVER="fake",
        NUBES_NETWORK_DRIVER="fake",
        NUBES_QEMU_USER="",
        NUBES_TOKEN="an-admin-token-a-careless-shell-exported",
    )
    argv = [sys.executable, "-m", "nubes.cli", "host", "join", api.url, "--token", token]
    agent = subprocess.Popen(
        [*argv, "--name", "m1", "--foreground"],
        env=env,
        stdout=(tmp_path / "agent.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not [h for h in api.admin.hosts() if h.name == "m1" and h.state == "up"]:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent did not come up"
            time.sleep(0.2)
        (host,) = api.admin.hosts()
        assert host.joined_via == "join-token" and host.agent_version
        me = host_state / "hosts" / "m1" / "identity.json"
        assert me.stat().st_mode & 0o777 == 0o600
        credential = json.loads(me.read_text())["credential"]
        environ = Path(f"/proc/{agent.pid}/environ").read_bytes()
        assert b"nubes.agent.main" in Path(f"/proc/{agent.pid}/cmdline").read_bytes()
        assert credential.encode() not in environ
        assert b"NUBES_TOKEN" not in environ and token.encode() not in environ
        # the token is spent: a second machine cannot use it
        again = subprocess.run(
            [*argv, "--name", "m2"], env=env, capture_output=True, text=True, timeout=60
        )
        assert again.returncode != 0 and "already used" in again.stderr + again.stdout
        # removed: the agent's next request is refused (its waiting long-poll is answered
        # first: the host is gone)
        api.admin.remove_host("m1")
        deadline = time.monotonic() + 30
        while "invalid or revoked host credential" not in (tmp_path / "agent.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)


def test_tls_context_trusts_only_the_given_ca(tmp_path: Path) -> None:
    ctx = tls.client_context(tls.make_ca(tmp_path / "ca").read_bytes())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1
