"""The OCI runtime config of a nubes container (pure: unit-tested field by field).

What it holds and why:
- a user namespace: container uids 0..65535 are host uids `uid_base`.., so root inside is an
  unprivileged uid outside (the rootfs is unpacked owned by those uids);
- its own pid, ipc, uts, mount and network namespaces, all owned by its user namespace (so
  `runc exec` can join them all); a createRuntime hook moves each port's veth end in as the
  namespaces are made, before the image's process runs, and gives it the port's name, MAC,
  address and route (root inside may change them: the host end's anti-spoofing holds anyway);
- no host mount: proc, sysfs (read-only), tmpfs /dev and /run, devpts, shm and mqueue are new
  filesystems, never binds;
- no_new_privileges, a small capability set, and a seccomp filter refusing kernel-wide
  syscalls (modules, kexec, bpf, perf, keyrings, clock, swap, reboot, new user namespaces);
- cgroup limits from the flavor: vCPUs as a CPU quota, RAM as the memory limit (swap included),
  a bound on pids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nubes.hypervisor.base import ContainerNic

ID_RANGE = 65536
CLONE_NEWUSER = 0x10000000
CPU_PERIOD = 100_000
PIDS_MAX = 4096

CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
]  # fmt: skip: Docker's default set, less MKNOD

DENIED_SYSCALLS = [
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "open_by_handle_at",
    "name_to_handle_at", "swapon", "swapoff", "reboot", "acct", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "iopl", "ioperm", "lookup_dcookie", "quotactl", "syslog",
    "userfaultfd", "mount", "umount2", "pivot_root", "setns", "unshare", "vhangup",
    "create_module", "get_kernel_syms", "query_module", "uselib", "nfsservctl", "ptrace",
    "process_vm_readv", "process_vm_writev", "kcmp", "fsopen", "fsmount", "move_mount",
    "open_tree", "fspick", "mount_setattr", "clone3",
]  # fmt: skip


@dataclass(frozen=True)
class ContainerConfig:
    hostname: str
    args: list[str]  # the image's process (image.json in the bundle)
    env: list[str]
    cwd: str
    uid_base: int  # host uid of root in the container
    nics: tuple[ContainerNic, ...]
    vcpus: int
    ram_mb: int
    terminal: bool = False


def seccomp() -> dict[str, Any]:
    # clone3 is refused with ENOSYS so that libc falls back to clone, whose flags we can see
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {
                "names": [n for n in DENIED_SYSCALLS if n != "clone3"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
                "args": [
                    {
                        "index": 0,
                        "value": CLONE_NEWUSER,
                        "valueTwo": CLONE_NEWUSER,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            },
        ],
    }


# The state runc gives a hook on stdin is one JSON line; its pid is the container's init.
_HOOK = r"""
read -r state || true; pid=${state#*\"pid\":}; pid=${pid%%[,\}]*}
ip link set "$1" netns "$pid"
nsenter -t "$pid" -n ip link set "$1" name "$2"
nsenter -t "$pid" -n ip link set "$2" address "$3" up
nsenter -t "$pid" -n ip addr add "$4" dev "$2"
[ -z "$5" ] || nsenter -t "$pid" -n ip route add default via "$5" dev "$2"
"""


def hook(nic: ContainerNic) -> dict[str, Any]:
    args = ["sh", "-ec", _HOOK, "nubes-nic", nic.peer, nic.name, nic.mac, nic.cidr]
    env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]  # runc gives hooks no environment
    return {"path": "/bin/sh", "args": [*args, nic.gateway or ""], "env": env, "timeout": 30}


def config(c: ContainerConfig) -> dict[str, Any]:
    caps = list(CAPS)
    mapping = [{"containerID": 0, "hostID": c.uid_base, "size": ID_RANGE}]
    nosuid = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.terminal,
            "user": {"uid": 0, "gid": 0},
            "args": c.args,
            "env": c.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": c.cwd or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": c.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": nosuid},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": [*nosuid, "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": [*nosuid, "ro"],
            },
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": nosuid},
            {
                "destination": "/run",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=755", "size=65536k"],
            },
        ],
        "hooks": {"createRuntime": [hook(nic) for nic in c.nics]},
        "linux": {
            "uidMappings": mapping,
            "gidMappings": mapping,
            "namespaces": [
                {"type": "user"},
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network"},
            ],
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": c.ram_mb << 20, "swap": c.ram_mb << 20},
                "cpu": {"quota": c.vcpus * CPU_PERIOD, "period": CPU_PERIOD},
                "pids": {"limit": PIDS_MAX},
            },
            "seccomp": seccomp(),
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],  # fmt: skip
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],  # fmt: skip
        },
    }
