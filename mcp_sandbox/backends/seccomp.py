"""The seccomp filter of a bubblewrap sandbox, as the classic BPF program ``bwrap --seccomp`` loads.

Modelled on Docker's default profile for a container without capabilities: the system calls that
profile refuses are refused here with EPERM, everything else is allowed. Those calls reach kernel
code that is not namespaced (keyrings, BPF, perf, modules, the clock, swap, quotas), give
unprivileged users a large attack surface (io_uring, userfaultfd) or change the sandbox itself
(mounts, new namespaces, setns). ``clone``/``unshare`` are refused only with a namespace flag, and
``clone3``, whose flags a filter cannot read, answers ENOSYS so that libc falls back to ``clone``.
A call made through another ABI than the host's (32-bit x86, x32, arm32) is refused, so that no
other syscall table slips past the numbers below. README's security model lists the same calls.
"""

from __future__ import annotations

import errno
import platform
import struct
from functools import cache

# name: (x86_64 number, aarch64 number); None where the architecture lacks the call.
DENIED: dict[str, tuple[int | None, int | None]] = {
    "acct": (163, 89),
    "add_key": (248, 217),
    "keyctl": (250, 219),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "lookup_dcookie": (212, 18),
    "syslog": (103, 116),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "mount_setattr": (442, 442),
    "setns": (308, 268),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "fanotify_init": (300, 262),
    "kcmp": (312, 272),
    "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440),
    "get_mempolicy": (239, 236),
    "set_mempolicy": (238, 237),
    "set_mempolicy_home_node": (450, 450),
    "mbind": (237, 235),
    "migrate_pages": (256, 238),
    "move_pages": (279, 239),
    "ioperm": (173, None),
    "iopl": (172, None),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "vhangup": (153, 58),
    "nfsservctl": (180, 42),
    "sysfs": (139, None),
    "_sysctl": (156, None),
    "uselib": (134, None),
    "ustat": (136, None),
    "lsm_get_self_attr": (459, 459),
    "lsm_set_self_attr": (460, 460),
    "lsm_list_modules": (461, 461),
}
# Tracing one's own processes (gdb, strace) is safe since Linux 4.8, where seccomp is checked
# again after a tracer changes a call; before, a tracer could slip past the filter.
TRACING = {"ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271)}
CLONE = (56, 220)
UNSHARE = (272, 97)
CLONE3 = (435, 435)
PERSONALITY = (135, 92)
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
NAMESPACE_FLAGS = 0x7E020000
CLONE_NEWTIME = 0x80  # unshare only: in clone's flags these bits are the exit signal
# PER_LINUX, PER_LINUX32, UNAME26, UNAME26 | PER_LINUX32, and the query: what Docker allows.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
X32_SYSCALL_BIT = 0x40000000

ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column in the tables, AUDIT_ARCH_*

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
RET = 0x06  # BPF_RET | BPF_K
ALLOW = 0x7FFF0000
ERRNO = 0x00050000
NR, ARCH, ARG0 = 0, 4, 16  # offsets in struct seccomp_data (args[0]'s low half: both are little-endian)

Label = str
Instruction = tuple[int, Label | int, Label | int, int]  # code, jump if true, jump if false, k


def kernel_at_least(release: str, major: int, minor: int) -> bool:
    numbers = [int(part) for part in release.split("-")[0].split(".")[:2] if part.isdigit()]
    return len(numbers) == 2 and (numbers[0], numbers[1]) >= (major, minor)


def build(machine: str, kernel_release: str) -> bytes | None:
    """The filter for an architecture, or None for one it has no table for."""
    if machine not in ARCHES:
        return None
    column, audit_arch = ARCHES[machine]
    denied = dict(DENIED)
    if not kernel_at_least(kernel_release, 4, 8):
        denied.update(TRACING)
    numbers = sorted({number for pair in denied.values() if (number := pair[column]) is not None})
    program: list[Instruction | Label] = [(LD_ABS, 0, 0, ARCH), (JEQ, 0, "deny", audit_arch), (LD_ABS, 0, 0, NR)]
    if machine == "x86_64":
        program.append((JGE, "deny", 0, X32_SYSCALL_BIT))
    program += [(JEQ, "deny", 0, number) for number in numbers]
    program += [
        (JEQ, "clone", 0, CLONE[column]),
        (JEQ, "unshare", 0, UNSHARE[column]),
        (JEQ, "personality", 0, PERSONALITY[column]),
        (JEQ, "enosys", 0, CLONE3[column]),
        (RET, 0, 0, ALLOW),
        "clone", (LD_ABS, 0, 0, ARG0), (JSET, "deny", "allow", NAMESPACE_FLAGS),
        "unshare", (LD_ABS, 0, 0, ARG0), (JSET, "deny", "allow", NAMESPACE_FLAGS | CLONE_NEWTIME),
        "personality", (LD_ABS, 0, 0, ARG0),
        *[(JEQ, "allow", 0, value) for value in PERSONALITIES],
        "deny", (RET, 0, 0, ERRNO | errno.EPERM),
        "enosys", (RET, 0, 0, ERRNO | errno.ENOSYS),
        "allow", (RET, 0, 0, ALLOW),
    ]
    return assemble(program)


def assemble(program: list[Instruction | Label]) -> bytes:
    """Resolve labels into the forward jump offsets of classic BPF (at most 255 instructions)."""
    labels: dict[str, int] = {}
    instructions: list[Instruction] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)
    out = bytearray()
    for index, (code, true, false, k) in enumerate(instructions):
        jumps = [labels[j] - index - 1 if isinstance(j, str) else j for j in (true, false)]
        assert all(0 <= j <= 255 for j in jumps), "a seccomp jump is out of range"
        out += struct.pack("=HBBI", code, jumps[0], jumps[1], k)
    return bytes(out)


@cache
def host_filter() -> bytes | None:
    return build(platform.machine(), platform.release())
