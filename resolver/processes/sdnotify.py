"""systemd's readiness protocol (sd_notify): `READY=1` and `STOPPING=1` as datagrams to $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1") to the service manager; False when none listens or it failed.

    A service manager that wants to hear (systemd with `Type=notify`) names a Unix datagram socket
    in NOTIFY_SOCKET: a path, or `@name` in the abstract namespace. Anywhere else nothing is sent.
    A failure is logged, never raised: serving does not depend on being heard.
    """
    where = os.environ.get("NOTIFY_SOCKET", "")
    if not where:
        return False
    if where.startswith("@"):
        address = "\0" + where[1:]
    elif where.startswith("/"):
        address = where
    else:  # vsock:... (a virtual machine's manager): not used for a DNS server
        log.warning("NOTIFY_SOCKET=%s is neither a path nor @name; not telling the service manager", where)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not tell the service manager %r through %s: %s", message, where, exc)
        return False
    return True
