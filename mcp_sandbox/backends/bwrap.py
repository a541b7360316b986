"""The bubblewrap command of a local sandbox: an allow-list view of the host, never its root.

A sandbox sees, read-only, ``/usr`` and the ``/bin``, ``/sbin`` and ``/lib*`` entries as the host
has them, ``/etc`` without its secrets, and the agent's package and interpreter where they are on
the host. Its own are ``/workspace``, ``/tmp`` and ``/var/tmp`` (directories of the sandbox), a
small ``/run``, ``/proc`` of its own pid namespace with the kernel's knobs read-only, and a minimal
``/dev``. Host directories enter only through ``--mount``. Nothing else of the host is there: no
home directory, ``/root``, ``/opt``, ``/var``, ``/srv``, ``/mnt`` or ``/media``, and no host socket.
A seccomp filter (seccomp.py) is loaded just before the agent starts.

When the server runs as root, the sandbox runs as an unprivileged user, and bubblewrap as that user
could not even reach what the view needs where it often lives (an interpreter under
``/root/.pyenv``, sandbox directories under a private temporary directory). So one bubblewrap
runs as root and builds only the view, in a mount and pid namespace of its own; inside it,
``setpriv`` becomes the sandbox user and starts the bubblewrap that makes the other namespaces,
so that the sandbox's uids map to that user and never to host root. When the outer bubblewrap
dies, its pid namespace dies with everything in it: a signal from it would not reach processes
of another user once it has dropped its capabilities.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..mounts import Mount
from . import seccomp, slirp

logger = logging.getLogger(__name__)

SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Secrets hidden even where a host left them readable; beyond these, /etc shows only what every
# user of the host may read.
ETC_SECRETS = (
    "shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh/ssh_host_*_key",
    "ssl/private", "pki/tls/private", "security/opasswd", "krb5.keytab", "ipsec.secrets",
    "ipsec.d/private", "ppp/*-secrets", "wireguard", "openvpn", "wpa_supplicant",
    "NetworkManager/system-connections", "letsencrypt", "mysql/debian.cnf", "docker/key.json",
)
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
# The sandbox's own directories: name under the sandbox directory, and where the sandbox sees it.
OWN_DIRS = {"workspace": "/workspace", "tmp": "/tmp", "var-tmp": "/var/tmp"}
PROBE_TIMEOUT = 30.0
# What bubblewrap says when it cannot make the namespaces (rather than, say, a missing path).
NAMESPACE_TROUBLE = ("namespace", "uid map", "gid map", "loopback")


@cache
def etc_hidden() -> tuple[tuple[str, bool], ...]:
    """What of /etc to hide, as (path, is a directory): secrets, entries that not every user of
    the host may read, and anything that is neither file, directory nor symlink (a socket)."""
    hidden: dict[str, bool] = {str(p): p.is_dir() for pattern in ETC_SECRETS for p in Path("/etc").glob(pattern)}
    for root, dirs, files in os.walk("/etc"):
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode) and mode & 0o005 != 0o005:
                hidden[path] = True
            elif not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)) and not (stat.S_ISREG(mode) and mode & 0o004):
                hidden[path] = False
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in hidden]
    # Within a hidden directory nothing more needs hiding (and its tmpfs hides it all).
    return tuple(
        (path, is_dir) for path, is_dir in sorted(hidden.items())
        if not any(path.startswith(other + "/") for other, d in hidden.items() if d)
    )


@cache
def system_view() -> tuple[str, ...]:
    """The read-only part of every sandbox's view: system directories and /etc."""
    args: list[str] = []
    for name in SYSTEM:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--ro-bind", "/etc", "/etc"]
    for path, is_dir in etc_hidden():
        args += ["--tmpfs", path, "--remount-ro", path] if is_dir else ["--ro-bind", "/dev/null", path]
    return tuple(args)


def outside_system(paths: list[str]) -> tuple[str, ...]:
    """The paths to bind besides the system view, none inside another (an interpreter in /usr
    needs no bind of its own, nor does its bin directory)."""
    kept = ["/" + name for name in SYSTEM] + ["/etc"]
    for path in sorted(set(paths), key=len):
        if not any(path == k or path.startswith(k + "/") for k in kept):
            kept.append(path)
    return tuple(kept[len(SYSTEM) + 1:])


def parents(path: str, made: set[str]) -> list[str]:
    """Make the directories above a mount point readable by all (bubblewrap as root makes them
    0700, which the sandbox user could not pass)."""
    args: list[str] = []
    parent = os.path.dirname(path)
    chain = []
    while parent != "/" and parent not in made:
        chain.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(chain):
        made.add(directory)
        args += ["--perms", "0755", "--dir", directory]
    return args


def make_own_dirs(directory: Path, uid: int, gid: int) -> None:
    """The sandbox's own directories, owned by the user it runs as."""
    for name in OWN_DIRS:
        (directory / name).mkdir(parents=True)
        if os.geteuid() == 0:
            os.chown(directory / name, uid, gid)


def seccomp_fd() -> int | None:
    """A file descriptor to read the seccomp filter from (bubblewrap reads it to the end)."""
    program = seccomp.host_filter()
    if program is None:
        return None
    read, write = os.pipe()
    os.write(write, program)  # a few hundred bytes: the pipe holds them
    os.close(write)
    return read


@dataclass(frozen=True)
class Bubblewrap:
    uid: int
    gid: int
    workspace_root: Path
    mounts: tuple[Mount, ...]
    host_paths: tuple[str, ...]  # what the agent needs read-only where it is: its package, its interpreter

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def command(self, directory: Path, argv: list[str], *, seccomp: int | None, info_fd: int | None = None) -> list[str]:
        """The command that runs ``argv`` in a sandbox whose directories are in ``directory``.

        The sandbox has a network namespace of its own, with nothing in it; with ``info_fd`` the
        bubblewrap that makes it reports the pid to attach slirp4netns to there (slirp.py).
        """
        bwrap = shutil.which("bwrap") or "bwrap"
        isolation = ["--proc", "/proc", "--dev", "/dev"]
        for path in PROC_READ_ONLY:  # the sandbox's /proc, so after --proc
            isolation += ["--ro-bind-try", path, path]
        isolation += [
            "--unshare-all", "--hostname", "sandbox", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--chdir", "/workspace",
            # The agent is pid 1: bubblewrap's own init would hold the channel's pipes where any
            # process in the sandbox could open them (/proc/1/fd), and the agent reaps orphans itself.
            "--as-pid-1",
        ]
        view = self.view(directory)
        reports = [] if info_fd is None else ["--info-fd", str(info_fd)]
        if info_fd is not None:
            view += slirp.resolver_bind(directory)
        if seccomp is not None:
            isolation += ["--seccomp", str(seccomp)]
        if not self.as_root:
            return [bwrap, *view, *isolation, *reports, "--", *argv]
        return [
            bwrap, *view,
            # The host's /proc lets the inner bubblewrap mount its own (the kernel requires a
            # proc mount it can see whole); the inner one covers it.
            "--bind", "/proc", "/proc", "--dev", "/dev", "--unshare-pid", "--die-with-parent",
            # The network namespace is made here, owned by the host's user namespace: slirp4netns
            # (as root) can join it, and nothing in the sandbox can reconfigure it.
            "--unshare-net", *reports, "--",
            shutil.which("setpriv") or "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
            bwrap, "--bind", "/", "/", *isolation, "--share-net", "--", *argv,
        ]

    def view(self, directory: Path) -> list[str]:
        args = list(system_view())
        made = {"/workspace", "/tmp"}
        for name, target in OWN_DIRS.items():
            args += parents(target, made) + ["--bind", str(directory / name), target]
        args += ["--tmpfs", "/run", "--chmod", "1777", "/run"]
        for path in self.host_paths:
            args += parents(path, made) + ["--ro-bind", path, path]
        for mount in self.mounts:
            args += parents(mount.sandbox, made)
            args += ["--ro-bind" if mount.read_only else "--bind", str(mount.host), mount.sandbox]
            if self.workspace_root.is_relative_to(mount.host):  # other sandboxes stay out of sight
                args += ["--tmpfs", os.path.join(mount.sandbox, self.workspace_root.relative_to(mount.host))]
        return args

    @cache
    def problem(self, argv: tuple[str, ...]) -> str | None:
        """Why a sandbox cannot start on this host, and what to do; None if one runs ``argv``."""
        if shutil.which("bwrap") is None:
            return "bubblewrap is not installed; install it (apt-get install bubblewrap, dnf install bubblewrap)"
        if self.as_root and shutil.which("setpriv") is None:
            return "setpriv is missing, which a server running as root needs to start sandboxes as --sandbox-user; install util-linux"
        fd = seccomp_fd()
        try:
            with tempfile.TemporaryDirectory(prefix="mcp-sandbox-probe-") as tmp:
                make_own_dirs(Path(tmp), self.uid, self.gid)
                result = subprocess.run(
                    self.command(Path(tmp), list(argv), seccomp=fd), stdin=subprocess.DEVNULL,
                    capture_output=True, timeout=PROBE_TIMEOUT, pass_fds=() if fd is None else (fd,),
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                )
        except subprocess.TimeoutExpired:
            return f"bubblewrap did not start a sandbox within {PROBE_TIMEOUT:.0f} s"
        finally:
            if fd is not None:
                os.close(fd)
        if result.returncode == 0:
            return None
        said = (result.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        advice = userns_advice(said) if any(m in said for m in NAMESPACE_TROUBLE) else None
        if advice is not None:
            return f"bubblewrap cannot create a user namespace here ({said}): {advice}"
        return f"bubblewrap could not start a sandbox: {said}"


def _sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def userns_advice(said: str) -> str | None:
    """What to do on the hosts known to forbid unprivileged user namespaces, or None."""
    if _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
        return (
            "AppArmor forbids unprivileged user namespaces (Ubuntu 23.10 and later, "
            "kernel.apparmor_restrict_unprivileged_userns=1); allow bubblewrap with a profile: write "
            "'abi <abi/4.0>, include <tunables/global> profile bwrap /usr/bin/bwrap flags=(unconfined) { userns, }' "
            "to /etc/apparmor.d/bwrap and run 'sudo apparmor_parser -r /etc/apparmor.d/bwrap' "
            "(or, for the whole host, 'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0')"
        )
    if _sysctl("kernel.unprivileged_userns_clone") == "0":
        return (
            "the kernel forbids unprivileged user namespaces (kernel.unprivileged_userns_clone=0); run "
            "'sudo sysctl -w kernel.unprivileged_userns_clone=1' and keep it in /etc/sysctl.d/"
        )
    limit = _sysctl("user.max_user_namespaces")
    if limit == "0" or "ENOSPC" in said or "No space left" in said:
        return (
            f"user namespaces are switched off or used up (user.max_user_namespaces={limit}, or a sandbox "
            "around mcp-sandbox forbids nesting them); run 'sudo sysctl -w user.max_user_namespaces=15000' "
            "and keep it in /etc/sysctl.d/, or run mcp-sandbox outside that sandbox"
        )
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return (
            "this is a container whose seccomp or AppArmor profile forbids namespaces; start it with "
            "--security-opt seccomp=unconfined --security-opt apparmor=unconfined, or run mcp-sandbox "
            "on the host (or with --backend docker)"
        )
    return None
