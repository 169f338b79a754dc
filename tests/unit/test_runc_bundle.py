"""The OCI config of a nubes container, field by field (hypervisor/runc/bundle.py)."""

from __future__ import annotations

from nubes.hypervisor.base import ContainerNic
from nubes.hypervisor.runc import bundle


def make(**kw: object) -> dict:  # type: ignore[type-arg]
    fields: dict[str, object] = dict(
        hostname="c1", args=["/sbin/init"], env=["A=1"], cwd="/", uid_base=1_065_536,
        nics=(ContainerNic("nc1", "eth0", "02:00:00:00:00:01", "10.0.0.2/24", "10.0.0.1"),),
        vcpus=2, ram_mb=256,
    )  # fmt: skip
    fields.update(kw)
    return bundle.config(bundle.ContainerConfig(**fields))  # type: ignore[arg-type]


def test_root_inside_is_the_base_uid_outside() -> None:
    linux = make()["linux"]
    want = [{"containerID": 0, "hostID": 1_065_536, "size": 65536}]
    assert linux["uidMappings"] == want and linux["gidMappings"] == want
    kinds = [ns["type"] for ns in linux["namespaces"]]
    assert kinds == ["user", "pid", "ipc", "uts", "mount", "network"]
    assert all("path" not in ns for ns in linux["namespaces"])  # all its own


def test_privileges_are_bounded() -> None:
    cfg = make()
    process = cfg["process"]
    assert process["noNewPrivileges"] is True
    caps = set(process["capabilities"]["bounding"])
    assert not caps & {"CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_NET_ADMIN", "CAP_MKNOD"}
    assert cfg["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_seccomp_refuses_kernel_wide_calls_and_new_user_namespaces() -> None:
    rules = make()["linux"]["seccomp"]["syscalls"]
    denied = {n for r in rules if "args" not in r for n in r["names"]}
    assert {"init_module", "finit_module", "kexec_load", "bpf", "mount", "unshare"} <= denied
    clone = next(r for r in rules if r["names"] == ["clone"])
    assert clone["args"][0]["value"] == bundle.CLONE_NEWUSER


def test_cgroup_limits_come_from_the_flavor() -> None:
    res = make(vcpus=2, ram_mb=256)["linux"]["resources"]
    assert res["memory"] == {"limit": 256 << 20, "swap": 256 << 20}
    assert res["cpu"]["quota"] == 2 * res["cpu"]["period"]
    assert res["pids"]["limit"] > 0


def test_no_host_mounts() -> None:
    cfg = make()
    assert cfg["root"] == {"path": "rootfs", "readonly": False}
    for mount in cfg["mounts"]:
        assert "bind" not in mount["options"] and "rbind" not in mount["options"], mount
        assert mount["type"] != "bind" and not mount["source"].startswith("/"), mount


def test_each_nic_has_its_hook() -> None:
    hooks = make()["hooks"]["createRuntime"]
    assert len(hooks) == 1
    assert hooks[0]["args"][-6:] == [
        "nubes-nic", "nc1", "eth0", "02:00:00:00:00:01", "10.0.0.2/24", "10.0.0.1"
    ]  # fmt: skip
    assert make(nics=())["hooks"]["createRuntime"] == []
