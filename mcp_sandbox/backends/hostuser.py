"""The host user local sandboxes run as: never root (``--sandbox-user``)."""

from __future__ import annotations

import getpass
import grp
import os
import pwd
from dataclasses import dataclass

from ..errors import SandboxError


@dataclass(frozen=True)
class HostUser:
    uid: int
    gid: int
    name: str


def current_user() -> HostUser:
    return HostUser(os.getuid(), os.getgid(), getpass.getuser())


def resolve_user(setting: str) -> HostUser:
    """``USER`` or ``UID``, optionally ``:GROUP`` or ``:GID``. A user without a group takes its own
    primary group; a uid the host does not know takes the gid of the same number."""
    user, _, group = setting.partition(":")
    try:
        entry: pwd.struct_passwd | None = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        entry = None
    if entry is None and not user.isdigit():
        raise SandboxError(
            "INVALID_ARGUMENT", f"--sandbox-user {setting}: there is no user {user!r} on this host; name one or give a uid"
        )
    uid = entry.pw_uid if entry is not None else int(user)
    gid = entry.pw_gid if entry is not None else uid
    if group.isdigit():
        gid = int(group)
    elif group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise SandboxError(
                "INVALID_ARGUMENT", f"--sandbox-user {setting}: there is no group {group!r} on this host"
            ) from None
    if uid == 0 or gid == 0:
        raise SandboxError(
            "INVALID_ARGUMENT",
            f"--sandbox-user {setting}: sandboxes never run as root (uid or gid 0); choose an unprivileged "
            "user, such as nobody or one made for them (useradd --system mcp-sandbox)",
        )
    return HostUser(uid, gid, entry.pw_name if entry is not None else str(uid))
