"""A nubes cloud the real OpenStack clients can reach: the in-process cloud of tests/cloud.py
(fake drivers) with its app also served over HTTPS on a loopback port, a project `team` with a
network, a public image and an external network, and a clouds.yaml made by `nubes openstack
clouds-yaml`. The clients run as subprocesses from their own venv (`make deps` makes it)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from typer.testing import CliRunner

from nubes import tls
from nubes.cli.main import app as cli_app
from nubes.client import NubesClient
from nubes.schemas import resources as s
from tests.cloud import Cloud, make_image

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("NUBES_OPENSTACK_VENV", ROOT / ".venv-openstack"))
OPENSTACK = VENV / "bin" / "openstack"
ANSIBLE_VENV = Path(os.environ.get("NUBES_ANSIBLE_VENV", ROOT / ".venv-ansible"))
ANSIBLE_PLAYBOOK = ANSIBLE_VENV / "bin" / "ansible-playbook"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Https:
    """The cloud's app on https://127.0.0.1:<port>, as `nubes-api` serves it: in the event loop
    of the UNIX socket's server, as nubes-api has one loop for both (the long-polls' and event
    streams' waits belong to it), with no lifespan of its own (that server owns the app's
    background loops)."""

    def __init__(self, cloud: Cloud) -> None:
        settings = cloud.settings
        files = tls.issue_server_cert(settings.tls_dir, ["127.0.0.1", "localhost"])
        config = uvicorn.Config(
            cloud.app,
            host="127.0.0.1",
            port=settings.api_port,
            ssl_certfile=str(files.cert),
            ssl_keyfile=str(files.key),
            lifespan="off",
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.serving = asyncio.run_coroutine_threadsafe(self.server.serve(), cloud.apis[0].loop)
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTPS listener did not start")
            time.sleep(0.02)
        self.ca_file = files.ca_cert

    def close(self) -> None:
        self.server.should_exit = True
        self.serving.result(timeout=10)


class OpenStackCli:
    """`openstack --os-cloud nubes ...` with every other OS_* variable removed."""

    def __init__(self, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["OS_CLIENT_CONFIG_FILE"] = str(config)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        self.env = env
        self.debug = ""  # the last command's --debug output

    def run(self, *args: str, fmt: bool = True, check: bool = True) -> Any:
        argv = [str(OPENSTACK), "--os-cloud", "nubes", "--debug", *args]
        if fmt:
            argv += ["-f", "json"]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=300)
        self.debug = proc.stderr
        if check and proc.returncode != 0:
            raise AssertionError(
                f"openstack {' '.join(args)} exited {proc.returncode}\n--- stdout:\n"
                f"{proc.stdout[-4000:]}\n--- stderr (--debug):\n{proc.stderr[-30000:]}"
            )
        if not check:
            return proc
        return json.loads(proc.stdout) if fmt and proc.stdout.strip() else proc.stdout

    def playbook(self, path: Path) -> dict[str, Any]:
        """`ansible-playbook` on localhost with the JSON callback: {task name: its result}."""
        env = self.env | {
            "ANSIBLE_STDOUT_CALLBACK": "json",
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            "ANSIBLE_HOME": str(path.parent / "ansible-home"),
            "LC_ALL": "C.UTF-8",  # ansible-core refuses a locale that is not UTF-8
        }
        argv = [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(path)]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        try:
            plays = json.loads(proc.stdout)["plays"]
        except (ValueError, KeyError):
            plays = []
        results = {t["task"]["name"]: t["hosts"]["localhost"] for p in plays for t in p["tasks"]}
        if proc.returncode != 0:
            raise AssertionError(
                f"ansible-playbook exited {proc.returncode}\n--- results:\n"
                f"{json.dumps(results, indent=1)[-20000:]}\n--- stderr:\n{proc.stderr[-10000:]}"
            )
        return results

    def python(self, script: str) -> Any:
        """A script run by the clients' venv's python; it prints one JSON document."""
        proc = subprocess.run(
            [str(VENV / "bin" / "python"), "-c", script],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"script exited {proc.returncode}\n--- stdout:\n{proc.stdout[-4000:]}\n"
                f"--- stderr:\n{proc.stderr[-30000:]}"
            )
        return json.loads(proc.stdout.strip().splitlines()[-1])


class OpenStackCloud:
    def __init__(self, root: Path, database_url: str, **settings: Any) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.cloud = Cloud(
            root, hosts=1, database_url=database_url, api_port=free_port(), **settings
        )
        try:
            self.https = Https(self.cloud)
            self._prepare()
        except BaseException:
            self.cloud.close()
            raise

    def _prepare(self) -> None:
        admin = self.cloud.client
        image = admin.create_image(s.ImageCreate(name="tiny", disk_format="qcow2"))
        data = make_image(self.root / "tiny.qcow2").read_bytes()
        admin.upload_image_part(image.id, "file", iter([data]))
        admin.create_network(
            s.NetworkCreate(name="public", cidr="198.51.100.0/24", external=True, uplink="eth1")
        )
        team = admin.create_project(s.ProjectCreate(name="team"))
        self.project_id, self.team_token = team.id, team.token
        self.team = NubesClient(self.cloud.url, team.token)
        self.team.create_network(s.NetworkCreate(name="blue", cidr="10.30.0.0/24"))
        self.config = self.root / "clouds.yaml"
        self.config.write_text(self.clouds_yaml("team"))
        self.cli = OpenStackCli(self.config)

    def clouds_yaml(self, project: str | None) -> str:
        """What `nubes openstack clouds-yaml [--project P]` prints, as the admin runs it."""
        env = {"NUBES_URL": self.cloud.url, "NUBES_TOKEN": self.cloud.token, "NUBES_CA_FILE": ""}
        args = ["openstack", "clouds-yaml"] + (["--project", project] if project else [])
        result = CliRunner().invoke(cli_app, args, env=env)
        assert result.exit_code == 0, result.output
        return result.output

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.cloud.settings.api_port}"

    def keystone_token(self) -> str:
        """A Keystone token of `team` (password method: the project's name and a token of it)."""
        auth = {"identity": {"methods": ["password"], "password": {"user": {
            "name": "team", "domain": {"id": "default"}, "password": self.team_token,
        }}}}  # fmt: skip
        with httpx.Client(verify=str(self.https.ca_file)) as http:
            made = http.post(f"{self.https_url}/identity/v3/auth/tokens", json={"auth": auth})
        made.raise_for_status()
        return made.headers["X-Subject-Token"]

    def close(self) -> None:
        self.https.close()
        self.team.close()
        self.cloud.close()
