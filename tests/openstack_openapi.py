"""An OpenAPI 3 document of nubes' OpenStack subset, for schemathesis (tests/functional/
test_fuzz_openstack.py). The routes are left out of /openapi.json (they are documented by
OpenStack's API reference, and take their bodies as `Any` to answer in OpenStack's error
shapes), so the paths, methods and parameters are read from the app's own routes, and the
request bodies are written here by hand from that reference: what the real clients send
(docs/architecture.md, "The OpenStack API").
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

# the side modules add their routes to the services' routers when imported
from nubes.openstack import (  # noqa: F401
    compute,
    compute_misc,
    flavors_keypairs,
    identity,
    image,
    networks,
    neutron,
    security,
)

STR: dict[str, Any] = {"type": "string", "maxLength": 80}
NAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 64}
UUID: dict[str, Any] = {"type": "string", "format": "uuid"}


def obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or []}


def wrapped(key: str, inner: dict[str, Any]) -> dict[str, Any]:
    return obj([key], **{key: inner})


AUTH = wrapped(
    "auth",
    obj(
        ["identity"],
        identity=obj(
            ["methods"],
            methods={
                "type": "array",
                "items": {"enum": ["password", "token", "application_credential"]},
                "minItems": 1,
            },
            password=wrapped(
                "user", obj(["password"], name=STR, id=STR, password=STR, domain=obj(name=STR))
            ),
            token=obj(["id"], id=STR),
            application_credential=obj(["id", "secret"], id=STR, secret=STR, name=STR),
        ),
        scope=obj(project=obj(id=STR, name=STR, domain=obj(name=STR, id=STR))),
    ),
)
SERVER = wrapped(
    "server",
    obj(
        ["name", "flavorRef"],
        name=NAME,
        imageRef=STR,
        flavorRef=STR,
        key_name=STR,
        user_data={"type": "string", "maxLength": 200},
        networks={
            "oneOf": [
                {"enum": ["auto", "none"]},
                {"type": "array", "items": obj(uuid=UUID, port=UUID, fixed_ip=STR), "maxItems": 3},
            ]
        },
        security_groups={"type": "array", "items": obj(name=STR), "maxItems": 3},
        block_device_mapping_v2={
            "type": "array",
            "maxItems": 2,
            "items": obj(
                uuid=STR,
                source_type={"enum": ["image", "volume", "blank"]},
                destination_type={"enum": ["local", "volume"]},
                boot_index={"type": "integer"},
                volume_size={"type": "integer"},
                delete_on_termination={"type": "boolean"},
            ),
        },
        min_count={"type": "integer"},
        max_count={"type": "integer"},
        metadata={"type": "object", "additionalProperties": STR},
    ),
)
ACTION: dict[str, Any] = {
    "oneOf": [
        obj(["os-start"], **{"os-start": {"type": "null"}}),
        obj(["os-stop"], **{"os-stop": {"type": "null"}}),
        wrapped("reboot", obj(["type"], type={"enum": ["SOFT", "HARD"]})),
    ]
}
KEYPAIR = wrapped("keypair", obj(["name"], name=NAME, public_key=STR, type={"enum": ["ssh"]}))
IMAGE = obj(
    ["name"],
    name=NAME,
    disk_format={"enum": ["qcow2", "raw", "vmdk"]},
    container_format={"enum": ["bare", "ovf"]},
    visibility={"enum": ["private", "public", "shared"]},
    min_disk={"type": "integer"},
    tags={"type": "array", "items": STR},
)
PATCH: dict[str, Any] = {
    "type": "array",
    "maxItems": 3,
    "items": obj(["op", "path"], op={"enum": ["add", "replace", "remove"]}, path=STR, value=STR),
}
NETWORK = wrapped(
    "network",
    obj(name=NAME, admin_state_up={"type": "boolean"}, shared={"type": "boolean"},
        port_security_enabled={"type": "boolean"}, mtu={"type": "integer"}),
)  # fmt: skip
SUBNET = wrapped(
    "subnet",
    obj(
        ["network_id", "cidr", "ip_version"],
        network_id=STR,
        cidr=STR,
        ip_version={"enum": [4, 6]},
        name=NAME,
        gateway_ip={"type": ["string", "null"]},
        enable_dhcp={"type": "boolean"},
        dns_nameservers={"type": "array", "items": STR},
        allocation_pools={"type": "array", "items": obj(start=STR, end=STR)},
    ),
)
SECGROUP = wrapped("security_group", obj(["name"], name=NAME, description=STR))
RULE = wrapped(
    "security_group_rule",
    obj(
        ["security_group_id", "direction"],
        security_group_id=STR,
        direction={"enum": ["ingress", "egress"]},
        ethertype={"enum": ["IPv4", "IPv6"]},
        protocol={"type": ["string", "integer", "null"]},
        port_range_min={"type": ["integer", "null"]},
        port_range_max={"type": ["integer", "null"]},
        remote_ip_prefix={"type": ["string", "null"]},
        remote_group_id={"type": ["string", "null"]},
    ),
)
FLOATINGIP = wrapped(
    "floatingip", obj(["floating_network_id"], floating_network_id=STR, port_id=STR,
                      fixed_ip_address=STR)
)  # fmt: skip
FLOATINGIP_SET = wrapped("floatingip", obj(port_id={"type": ["string", "null"]}))

BODIES: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("post", "/identity/v3/auth/tokens"): ("application/json", AUTH),
    ("post", "/compute/v2.1/servers"): ("application/json", SERVER),
    ("post", "/compute/v2.1/servers/{ident}/action"): ("application/json", ACTION),
    ("post", "/compute/v2.1/os-keypairs"): ("application/json", KEYPAIR),
    ("post", "/image/v2/images"): ("application/json", IMAGE),
    ("put", "/image/v2/images/{ident}/file"): (
        "application/octet-stream",
        {"type": "string", "format": "binary"},
    ),
    ("patch", "/image/v2/images/{ident}"): ("application/openstack-images-v2.1-json-patch", PATCH),
    ("post", "/network/v2.0/networks"): ("application/json", NETWORK),
    ("post", "/network/v2.0/subnets"): ("application/json", SUBNET),
    ("post", "/network/v2.0/security-groups"): ("application/json", SECGROUP),
    ("post", "/network/v2.0/security-group-rules"): ("application/json", RULE),
    ("post", "/network/v2.0/floatingips"): ("application/json", FLOATINGIP),
    ("put", "/network/v2.0/floatingips/{ident}"): ("application/json", FLOATINGIP_SET),
}


def _param(name: str, where: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": where, "required": False, "schema": schema}


# the lists' filters and pages, as the clients send them (the routes read the query string)
LIST_QUERY = [
    _param("limit", "query", {"type": "integer"}),
    _param("marker", "query", STR),
    _param("name", "query", STR),
]
EXTRA_QUERY: dict[str, list[dict[str, Any]]] = {
    "/compute/v2.1/servers/detail": [
        _param("status", "query", STR),
        _param("all_tenants", "query", {"enum": ["1", "0", "true"]}),
        _param("changes-since", "query", STR),
    ],
    "/image/v2/images": [_param("visibility", "query", STR), _param("status", "query", STR)],
    "/network/v2.0/networks": [_param("router:external", "query", {"enum": ["True", "False"]}),
                               _param("id", "query", STR)],
    "/network/v2.0/subnets": [_param("network_id", "query", STR)],
    "/network/v2.0/ports": [_param("device_id", "query", STR), _param("network_id", "query", STR)],
    "/network/v2.0/floatingips": [_param("port_id", "query", STR),
                                  _param("floating_ip_address", "query", STR)],
    "/network/v2.0/security-group-rules": [_param("security_group_id", "query", STR)],
}  # fmt: skip
# Nova's microversion headers: 2.1 and latest are taken, others 406, nonsense 400
MICROVERSION = [
    _param("X-OpenStack-Nova-API-Version", "header", {"enum": ["2.1", "latest", "2.95", "x"]}),
    _param("OpenStack-API-Version", "header", STR),
]


def document() -> dict[str, Any]:
    """The subset's OpenAPI document: every route once (not its trailing-slash twin)."""
    routes = []
    for router in (identity.router, compute.router, image.router, neutron.router):
        for route in router.routes:
            if not isinstance(route, APIRoute) or (route.name or "").endswith("-slash"):
                continue
            shown = copy.copy(route)
            shown.include_in_schema = True
            routes.append(shown)
    doc = get_openapi(title="nubes OpenStack subset", version="0.1.0", routes=routes)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            op.pop("requestBody", None)  # `Any` bodies: replaced by the reference's shapes
            params = op.setdefault("parameters", [])
            if method == "get" and not path.endswith("}"):
                params += LIST_QUERY + EXTRA_QUERY.get(path, [])
            if path.startswith("/compute/v2.1"):
                params += MICROVERSION
            if (method, path) in BODIES:
                media, schema = BODIES[(method, path)]
                op["requestBody"] = {"required": True, "content": {media: {"schema": schema}}}
    missing = [k for k in BODIES if k[1] not in doc["paths"] or k[0] not in doc["paths"][k[1]]]
    assert not missing, f"bodies written for routes that do not exist: {missing}"
    return doc
