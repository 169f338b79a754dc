from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from nubes import tls
from nubes.client import sse
from nubes.schemas import agent as a
from nubes.schemas import events as se
from nubes.schemas import openstack as so
from nubes.schemas import quotas as sq
from nubes.schemas import resources as s
from nubes.schemas import volumes as sv
from nubes.schemas.console import ExecRequest, ExecResult

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answer from the API (or no answer at all: status 0)."""

    def __init__(
        self, status: int, detail: str, field: str | None = None, kind: str = "about:blank"
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.type = kind  # the problem's type (errors.HOST_FENCED: this host is fenced)


def fetch_pinned_ca(url: str, fingerprint: str, timeout: float = 30.0) -> bytes:
    """The API's CA, trusted only if its sha256 is the one a join token carries.

    This first contact cannot verify the server (there is no CA yet): the fingerprint decides,
    and nothing secret is sent until a second connection has verified the server against the
    pinned CA."""
    try:
        with httpx.Client(base_url=url, verify=False, timeout=timeout) as http:  # noqa: S501
            resp = http.get("/v1/join/ca")
    except httpx.TransportError as exc:
        raise ApiError(0, f"cannot reach the nubes API at {url}: {exc}") from exc
    if resp.status_code != 200:
        raise _error(resp)
    pem = resp.content
    try:
        got = tls.fingerprint(pem)
    except ValueError:
        raise ApiError(0, f"{url} sent no certificate at /v1/join/ca") from None
    if got != fingerprint.lower():
        raise ApiError(
            0,
            f"the API at {url} presents a CA with sha256 {got}, but the join token pins "
            f"{fingerprint}: refusing to join (wrong address, or someone in between)",
        )
    return pem


def load_config() -> tuple[str, str]:
    """NUBES_URL/NUBES_TOKEN, else the client.json the API wrote in the state directory."""
    url, token = os.environ.get("NUBES_URL", ""), os.environ.get("NUBES_TOKEN", "")
    if url and token:
        return url, token
    state_dir = Path(os.environ.get("NUBES_STATE_DIR", "/var/lib/nubes"))
    path = state_dir / "client.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ApiError(0, f"no client config at {path}: is nubes running? (nubes up)") from None
    return url or data["url"], token or data["token"]


def ca_from_env() -> bytes | None:
    """NUBES_CA_FILE: the cloud's CA, for a CLI or agent that reaches the API over HTTPS."""
    path = os.environ.get("NUBES_CA_FILE", "")
    return Path(path).read_bytes() if path else None


# An idle connection is kept this long (httpx's default is 5 s): an agent's heartbeat then
# reuses its connection instead of paying a TLS handshake each time, on both sides. The API
# keeps its end open longer (api/server.py), so a request never races the server's close.
KEEPALIVE_SECONDS = 60.0


class NubesClient:
    def __init__(
        self, url: str, token: str, timeout: float = 60.0, ca_pem: bytes | None = None
    ) -> None:
        """`ca_pem`: the only CA trusted for an https:// URL (default: NUBES_CA_FILE)."""
        self._url = url
        if url.startswith("unix://"):
            transport = httpx.HTTPTransport(uds=url[len("unix://") :])
            self._http = httpx.Client(transport=transport, base_url="http://nubes", timeout=timeout)
        else:
            ca = ca_pem if ca_pem is not None else ca_from_env()
            verify: ssl.SSLContext | bool = tls.client_context(ca) if ca else True
            self._http = httpx.Client(
                base_url=url,
                timeout=timeout,
                verify=verify,
                limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS),
            )
        if token:
            self._http.headers["authorization"] = f"Bearer {token}"

    def set_token(self, token: str) -> None:
        self._http.headers["authorization"] = f"Bearer {token}"

    @classmethod
    def from_config(cls) -> NubesClient:
        return cls(*load_config())

    def __enter__(self) -> NubesClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing -----------------------------------------------------------------
    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ApiError(
                0,
                f"cannot reach the nubes API at {self._url}: {exc} (is it running? on this "
                "machine `nubes lab up` starts the lab's, and `nubes lab status` shows it)",
            ) from exc
        if resp.status_code >= 400:
            raise _error(resp)
        return resp

    def _get(self, path: str, model: type[M], **kw: Any) -> M:
        return model.model_validate(self.request("GET", path, **kw).json())

    def _list(self, path: str, model: type[M]) -> list[M]:
        """Every page of a list, following each answer's `Link: <...>; rel="next"`."""
        adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
        items: list[M] = []
        url: str | None = path
        while url:
            resp = self.request("GET", url)
            items += adapter.validate_python(resp.json())
            url = resp.links.get("next", {}).get("url")
        return items

    def _post(self, path: str, model: type[M], body: BaseModel | dict[str, Any]) -> M:
        payload = body.model_dump(exclude_none=True) if isinstance(body, BaseModel) else body
        return model.model_validate(self.request("POST", path, json=payload).json())

    # -- resources ------------------------------------------------------------------
    def flavors(self) -> list[s.Flavor]:
        return self._list("/v1/flavors", s.Flavor)

    def create_flavor(self, body: s.FlavorCreate) -> s.Flavor:
        return self._post("/v1/flavors", s.Flavor, body)

    def images(self) -> list[s.Image]:
        return self._list("/v1/images", s.Image)

    def image(self, ref: str) -> s.Image:
        return self._get(f"/v1/images/{ref}", s.Image)

    def create_image(self, body: s.ImageCreate) -> s.Image:
        return self._post("/v1/images", s.Image, body)

    def upload_image_part(self, ref: str, part: str, chunks: Iterator[bytes]) -> s.Image:
        resp = self.request("PUT", f"/v1/images/{ref}/{part}", content=chunks, timeout=None)
        return s.Image.model_validate(resp.json())

    def keypairs(self) -> list[s.Keypair]:
        return self._list("/v1/keypairs", s.Keypair)

    def create_keypair(self, body: s.KeypairCreate) -> s.Keypair:
        return self._post("/v1/keypairs", s.Keypair, body)

    def networks(self) -> list[s.Network]:
        return self._list("/v1/networks", s.Network)

    def network(self, ref: str) -> s.Network:
        return self._get(f"/v1/networks/{ref}", s.Network)

    def create_network(self, body: s.NetworkCreate) -> s.Network:
        return self._post("/v1/networks", s.Network, body)

    def servers(self) -> list[s.Server]:
        return self._list("/v1/servers", s.Server)

    def server(self, ref: str) -> s.Server:
        return self._get(f"/v1/servers/{ref}", s.Server)

    def create_server(self, body: s.ServerCreate) -> s.Server:
        return self._post("/v1/servers", s.Server, body)

    def delete_server(self, ref: str) -> s.Server:
        return s.Server.model_validate(self.request("DELETE", f"/v1/servers/{ref}").json())

    def server_action(self, ref: str, action: str, hard: bool = False) -> s.Server:
        body = s.ServerAction(action=action, hard=hard)  # type: ignore[arg-type]
        return self._post(f"/v1/servers/{ref}/action", s.Server, body)

    def migrate_server(self, ref: str, host: str | None = None, live: bool = False) -> s.Migration:
        body = s.MigrateRequest(host=host, live=live)
        return self._post(f"/v1/servers/{ref}/migrate", s.Migration, body)

    def incoming_console_log(self, host_id: str, migration_id: str) -> bytes:
        path = f"/v1/agent/hosts/{host_id}/migrations/{migration_id}/console-log"
        return self.request("GET", path).content

    def migration(self, migration_id: str) -> s.Migration:
        return self._get(f"/v1/migrations/{migration_id}", s.Migration)

    def exec(self, ref: str, command: list[str], timeout: int = 60) -> ExecResult:
        body = ExecRequest(command=command, timeout=timeout)
        resp = self.request(
            "POST", f"/v1/servers/{ref}/exec", json=body.model_dump(), timeout=timeout + 60.0
        )
        return ExecResult.model_validate(resp.json())

    def console_log(self, ref: str, tail: int = 0) -> str:
        return self.request("GET", f"/v1/servers/{ref}/console-log", params={"tail": tail}).text

    def explain_server(self, body: s.ServerCreate) -> s.Explanation:
        return self._post("/v1/servers/explain", s.Explanation, body)

    def events(
        self, after: int | None = None, reconnect: bool = True, ticks: bool = False
    ) -> Generator[se.ServerEvent | None]:
        """Server events as they happen (`after`: resume after this id; None: from now on).
        A dropped connection is opened again with Last-Event-ID (the last id the stream gave,
        the id of its start included): no event is lost or repeated. `ticks`: also None for
        each block without an event (the start, keepalives every 15 s), to look up between
        events. An error answer (401, 404) raises ApiError; so does a drop if not `reconnect`.
        """
        last = after
        while True:
            headers = {"last-event-id": str(last)} if last is not None else {}
            timeout = httpx.Timeout(30.0, read=45.0)  # keepalives come every 15 s
            try:
                with self._http.stream("GET", "/v1/events", headers=headers, timeout=timeout) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise _error(r)
                    for m in sse.parse(r.iter_lines()):
                        last = int(m.id) if m.id else last
                        if m.data:
                            yield se.ServerEvent.model_validate_json(m.data)
                        elif ticks:
                            yield None
            except httpx.TransportError as exc:
                if not reconnect:
                    raise ApiError(0, f"the event stream from {self._url} broke: {exc}") from exc
            if not reconnect:
                return  # the server ended it (shutting down)
            time.sleep(1.0)

    def volumes(self) -> list[sv.Volume]:
        return self._list("/v1/volumes", sv.Volume)

    def volume(self, ref: str) -> sv.Volume:
        return self._get(f"/v1/volumes/{ref}", sv.Volume)

    def create_volume(self, body: sv.VolumeCreate) -> sv.Volume:
        return self._post("/v1/volumes", sv.Volume, body)

    def delete_volume(self, ref: str) -> sv.Volume:
        return sv.Volume.model_validate(self.request("DELETE", f"/v1/volumes/{ref}").json())

    def attach_volume(self, server: str, volume: str) -> sv.Volume:
        return self._post(f"/v1/servers/{server}/volumes", sv.Volume, {"volume": volume})

    def detach_volume(self, server: str, volume: str) -> sv.Volume:
        resp = self.request("DELETE", f"/v1/servers/{server}/volumes/{volume}")
        return sv.Volume.model_validate(resp.json())

    def snapshot_server(self, server: str, name: str) -> s.Image:
        return self._post(f"/v1/servers/{server}/snapshot", s.Image, {"name": name})

    def rebuild_server(self, server: str, image: str | None = None) -> s.Server:
        return self._post(f"/v1/servers/{server}/rebuild", s.Server, sv.Rebuild(image=image))

    def resize_server(self, server: str, flavor: str) -> s.Server:
        return self._post(f"/v1/servers/{server}/resize", s.Server, sv.Resize(flavor=flavor))

    def groups(self) -> list[s.Group]:
        return self._list("/v1/groups", s.Group)

    def group(self, ref: str) -> s.Group:
        return self._get(f"/v1/groups/{ref}", s.Group)

    def create_group(self, body: s.GroupCreate) -> s.Group:
        return self._post("/v1/groups", s.Group, body)

    def security_groups(self) -> list[s.SecurityGroup]:
        return self._list("/v1/security-groups", s.SecurityGroup)

    def security_group(self, ref: str) -> s.SecurityGroup:
        return self._get(f"/v1/security-groups/{ref}", s.SecurityGroup)

    def create_security_group(self, body: s.SecurityGroupCreate) -> s.SecurityGroup:
        return self._post("/v1/security-groups", s.SecurityGroup, body)

    def delete_security_group(self, ref: str) -> None:
        self.request("DELETE", f"/v1/security-groups/{ref}")

    def create_security_group_rule(
        self, group: str, body: s.SecurityGroupRuleCreate
    ) -> s.SecurityGroupRule:
        return self._post(f"/v1/security-groups/{group}/rules", s.SecurityGroupRule, body)

    def delete_security_group_rule(self, rule_id: str) -> None:
        self.request("DELETE", f"/v1/security-group-rules/{rule_id}")

    def add_server_security_group(self, server: str, group: str) -> None:
        self.request("POST", f"/v1/servers/{server}/security-groups", json={"group": group})

    def remove_server_security_group(self, server: str, group: str) -> None:
        self.request("DELETE", f"/v1/servers/{server}/security-groups/{group}")

    def floating_ips(self) -> list[s.FloatingIp]:
        return self._list("/v1/floating-ips", s.FloatingIp)

    def create_floating_ip(self, body: s.FloatingIpCreate) -> s.FloatingIp:
        return self._post("/v1/floating-ips", s.FloatingIp, body)

    def associate_floating_ip(self, ref: str, server: str) -> s.FloatingIp:
        return self._post(
            f"/v1/floating-ips/{ref}/associate", s.FloatingIp, s.FloatingIpAssociate(server=server)
        )

    def disassociate_floating_ip(self, ref: str) -> s.FloatingIp:
        return self._post(f"/v1/floating-ips/{ref}/disassociate", s.FloatingIp, {})

    def delete_floating_ip(self, ref: str) -> None:
        self.request("DELETE", f"/v1/floating-ips/{ref}")

    def projects(self) -> list[s.Project]:
        return self._list("/v1/projects", s.Project)

    def create_openstack_credential(self, body: so.CredentialCreate) -> so.Credential:
        return self._post("/v1/openstack/credentials", so.Credential, body)

    def quotas(self, project: str | None = None) -> sq.QuotaSet:
        """A project's limits and usage (None: the caller's own project)."""
        return self._get(f"/v1/quotas/{project}" if project else "/v1/quotas", sq.QuotaSet)

    def set_quotas(self, project: str, body: sq.QuotaUpdate) -> sq.QuotaSet:
        payload = body.model_dump(exclude_unset=True)
        return sq.QuotaSet.model_validate(
            self.request("PUT", f"/v1/quotas/{project}", json=payload).json()
        )

    def create_project(self, body: s.ProjectCreate) -> s.ProjectCreated:
        return self._post("/v1/projects", s.ProjectCreated, body)

    @property
    def url(self) -> str:
        return self._url

    def hosts(self) -> list[s.Host]:
        return self._list("/v1/hosts", s.Host)

    def create_join_token(self, expires_in: int = 3600) -> a.JoinTokenCreated:
        body = a.JoinTokenCreate(expires_in=expires_in)
        return self._post("/v1/hosts/tokens", a.JoinTokenCreated, body)

    def remove_host(self, ref: str, force: bool = False) -> None:
        self.request("DELETE", f"/v1/hosts/{ref}", params={"force": force})

    def evacuate_host(self, ref: str) -> s.Evacuation:
        return self._post(f"/v1/hosts/{ref}/evacuate", s.Evacuation, {})

    def set_host_enabled(self, ref: str, enabled: bool) -> s.Host:
        return self._post(f"/v1/hosts/{ref}/{'enable' if enabled else 'disable'}", s.Host, {})

    def operations(self, server: str | None = None, limit: int = 50) -> list[s.Operation]:
        """The newest `limit` (one page: a log, not a list to read whole)."""
        params: dict[str, Any] = {"limit": limit} | ({"server": server} if server else {})
        resp = self.request("GET", "/v1/operations", params=params)
        return TypeAdapter(list[s.Operation]).validate_python(resp.json())

    def operation(self, op_id: str) -> s.Operation:
        return self._get(f"/v1/operations/{op_id}", s.Operation)

    def gc(self, repair: bool = False) -> s.GcReport:
        if repair:
            return self._post("/v1/gc", s.GcReport, {})
        return self._get("/v1/gc", s.GcReport)

    def delete(self, kind: str, ref: str) -> None:
        self.request("DELETE", f"/v1/{kind}/{ref}")

    # -- agents -------------------------------------------------------------------------
    def join(self, token: str, name: str) -> a.Joined:
        """Trade a join token for this host's credential (no bearer token needed)."""
        return self._post("/v1/join", a.Joined, a.JoinRequest(token=token, name=name))

    def rotate_credential(self, host_id: str) -> str:
        resp = self.request("POST", f"/v1/agent/hosts/{host_id}/credential")
        return a.Credential.model_validate(resp.json()).credential

    def host_certificate(self, host_id: str, csr: str) -> str:
        """The host's serving certificate for the console channel, signed by the cloud's CA."""
        body = a.CertificateRequest(csr=csr).model_dump()
        resp = self.request("POST", f"/v1/agent/hosts/{host_id}/certificate", json=body)
        return a.Certificate.model_validate(resp.json()).certificate

    def register_host(self, body: a.HostRegister) -> str:
        return str(self.request("POST", "/v1/agent/hosts", json=body.model_dump()).json()["id"])

    def heartbeat(self, host_id: str) -> None:
        self.request("POST", f"/v1/agent/hosts/{host_id}/heartbeat")

    def desired(self, host_id: str, since: int, wait: float) -> a.DesiredState | None:
        """The host's desired state once its generation is not `since`; None if `wait` seconds
        passed with no change (304: what the caller has is still current)."""
        resp = self.request(
            "GET",
            f"/v1/agent/hosts/{host_id}/desired",
            params={"since": since, "wait": wait},
            timeout=wait + 30,
        )
        if resp.status_code == 304:
            return None
        return a.DesiredState.model_validate(resp.json())

    def report(self, host_id: str, body: a.Report) -> None:
        self.request("POST", f"/v1/agent/hosts/{host_id}/report", json=body.model_dump(mode="json"))

    def upload_snapshot(self, host_id: str, image_id: str, chunks: Iterator[bytes]) -> None:
        path = f"/v1/agent/hosts/{host_id}/snapshots/{image_id}"
        self.request("PUT", path, content=chunks, timeout=None)

    def snapshot_failed(self, host_id: str, image_id: str, error: str) -> None:
        path = f"/v1/agent/hosts/{host_id}/snapshots/{image_id}/failed"
        self.request("POST", path, json={"error": error[:65536]})

    def download_image_part(self, image_id: str, part: str, dest: Path) -> None:
        with self._http.stream("GET", f"/v1/images/{image_id}/{part}", timeout=None) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise _error(resp)
            with dest.open("wb") as fh:
                for chunk in resp.iter_bytes(1 << 20):
                    fh.write(chunk)


def _error(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
        kind = str(body.get("type") or "about:blank")
        return ApiError(
            resp.status_code, str(body.get("detail", resp.text)), body.get("field"), kind
        )
    except (ValueError, AttributeError):
        return ApiError(resp.status_code, resp.text or resp.reason_phrase)
