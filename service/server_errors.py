"""gunicorn's own refusals, in JSON: a request it turns away before the app sees it (a request
line or a header over its limits, a malformed request) gets {"err_msg": ...}, as from the app
and nginx, never gunicorn's HTML page. Installed by gunicorn.conf.py, in the master.

A module of its own, importing nothing of the service: gunicorn.conf.py imports it before
the workers fork, and the service's modules create metric objects when imported."""

from __future__ import annotations

import json
import socket

# gunicorn's answers to requests it refuses before the app sees them, in the words nginx uses
# for the same refusals (nginx.conf.template): a client sees one answer, whichever refused.
SERVER_ERRORS = {
    400: "Bad request",
    414: "URI too long",
    431: "Request headers too large",
    500: "Internal server error",
}


def write_server_error(sock: socket.socket, status: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's replacement: {"err_msg": ...}, not an HTML page. `mesg`
    (gunicorn's details, the client's own bytes among them) goes to gunicorn's log only."""
    from gunicorn.util import write_nonblock

    body = json.dumps({"err_msg": SERVER_ERRORS.get(status, reason)}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    write_nonblock(sock, head.encode("latin-1") + body)


def json_server_errors() -> None:
    """Make gunicorn answer what it refuses itself (a request line or a header over its
    limits, a malformed request) in JSON. Over HTTP/2, nginx passes on a header that is over
    its limit but compresses under it (nginx.conf.template), and gunicorn refuses it.

    Relies on gunicorn 27: a worker's handle_error answers through gunicorn.util.write_error
    (sock, status, reason, mesg), looked up on the module at each call."""
    from gunicorn import util

    util.write_error = write_server_error
