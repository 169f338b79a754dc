"""The metadata service on fake drivers: the serving agent answers each instance its own data,
found by network and source address, and follows creates, deletes and recreates."""

from __future__ import annotations

import json

from nubes.schemas import resources as s
from tests.cloud import Cloud

META = "/openstack/latest/meta_data.json"


def meta(cloud: Cloud, network_id: str, ip: str) -> dict[str, object] | None:
    agent = cloud.agents[0][0]
    answer = agent.metadata.ask(network_id, ip, META)
    return json.loads(answer.body) if answer.status == 200 else None


def test_each_instance_gets_its_own_metadata(ready: Cloud) -> None:
    cloud = ready
    key = cloud.client.create_keypair(s.KeypairCreate(name="k1"))
    body = dict(image="img", flavor="m1.tiny", network="net")
    cloud.client.create_server(
        s.ServerCreate(name="web1", key_name="k1", user_data="#cloud-config\n{}\n", **body)
    )
    cloud.client.create_server(s.ServerCreate(name="web2", **body))
    web1 = cloud.wait_status("web1", "ACTIVE")
    web2 = cloud.wait_status("web2", "ACTIVE")
    net = cloud.client.network("net")
    ip1, ip2 = web1.addresses["net"][0], web2.addresses["net"][0]

    def served() -> bool:
        return meta(cloud, net.id, ip2) is not None

    cloud.wait(served, what="the metadata table to follow the desired state")
    doc1, doc2 = meta(cloud, net.id, ip1), meta(cloud, net.id, ip2)
    assert doc1 is not None and doc2 is not None
    assert (doc1["uuid"], doc1["name"]) == (web1.id, "web1")
    assert doc1["public_keys"] == {"k1": key.public_key}
    assert (doc2["uuid"], doc2["name"]) == (web2.id, "web2")
    assert doc2["public_keys"] == {}
    agent = cloud.agents[0][0]
    assert agent.metadata.ask(net.id, ip1, "/latest/user-data").body == b"#cloud-config\n{}\n"
    # an address nobody has, or the right address on another network: nothing
    assert meta(cloud, net.id, "10.20.0.200") is None
    assert meta(cloud, "another-network", ip1) is None

    # a recreated instance of the same name is a new instance-id at the (reused) address
    cloud.client.delete_server("web2")
    cloud.wait(lambda: meta(cloud, net.id, ip2) is None, what="web2's data to go")
    cloud.client.create_server(s.ServerCreate(name="web2", **body))
    new = cloud.wait_status("web2", "ACTIVE")
    assert new.id != web2.id
    ip_new = new.addresses["net"][0]
    cloud.wait(lambda: meta(cloud, net.id, ip_new) is not None, what="the new web2")
    doc = meta(cloud, net.id, ip_new)
    assert doc is not None and doc["uuid"] == new.id
