"""Schemathesis over the OpenStack subset (Keystone, Nova, Glance, Neutron), with the document
tests/openstack_openapi.py writes for it: no request, valid by it or made invalid on purpose,
gets a 500. Authenticated as a Keystone token of the admin (which sees every route), on the
cloud of test_fuzz.py (an image, a network); bounded and derandomized like it."""

from __future__ import annotations

import traceback
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.cloud import Cloud
from tests.functional.test_fuzz import EXAMPLES, RANDOM, cloud  # noqa: F401 (the fixture)
from tests.openstack_openapi import document

# Glance's JSON patch (`openstack image set`) is JSON under its own media type
schemathesis.serializer.alias("application/openstack-images-v2.1-json-patch", "application/json")


def keystone_token(c: Cloud) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": c.token}}}}}  # fmt: skip
    transport = httpx.HTTPTransport(uds=str(c.settings.api_socket))
    with httpx.Client(transport=transport, base_url="http://nubes") as http:
        answer = http.post("/identity/v3/auth/tokens", json=body)
    assert answer.status_code == 201, answer.text
    return answer.headers["x-subject-token"]


def test_no_server_errors_on_the_openstack_routes(cloud: Cloud) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_dict(document())
    schema.app = cloud.app
    auth = {"X-Auth-Token": keystone_token(cloud)}
    failures: list[str] = []
    calls = 0
    succeeded: set[str] = set()  # operations that answered 2xx at least once
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=not RANDOM,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(GenerationMode.POSITIVE)
            | operation.as_strategy(GenerationMode.NEGATIVE)
        )
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            try:
                response = case.call(headers=auth)
            except Exception as exc:  # the test client re-raises what the app did not handle
                where = traceback.extract_tb(exc.__traceback__)[-1]
                failures.append(
                    f"{case.method} {case.formatted_path}: {type(exc).__name__}: {exc} "
                    f"({where.filename}:{where.lineno}) body={case.body!r:.200}"
                )
                return
            if response.status_code < 300:
                succeeded.add(f"{case.method} {case.path}")
            if response.status_code >= 500:
                failures.append(
                    f"{response.status_code} {case.method} {case.formatted_path} "
                    f"query={case.query} body={case.body!r:.300}: {response.text[:300]}"
                )

        run()
    print(f"fuzzed {calls} requests, {len(succeeded)} operations answered 2xx")
    assert calls > 300
    # authenticated and deep: not every case is refused at the door
    assert len(succeeded) >= 25, sorted(succeeded)
    assert not failures, "\n".join(failures[:20])
