"""Runs one uvicorn worker of app.py on a listening socket handed over as fd 3 (the harness
binds it on 127.0.0.1:0, so no port is ever guessed), plus a listening Unix socket handed over
as fd 4 when ``FLEET_UNIX_FD=4`` (one worker, one loop, reachable both ways: the proxy on the
socket file, the harness's own stats and fault calls on TCP), or on a Unix socket path given
as the first argument. The same as `uvicorn app:app --port N` otherwise: uvloop, httptools, no
access log. (`uvicorn --fd` would take the socket for a Unix one and leave Nagle on.)
"""

import os
import socket
import sys

import uvicorn

config = uvicorn.Config(
    "app:app",
    loop="uvloop",
    http="httptools",
    access_log=False,
    log_level="warning",
    backlog=2048,
)
server = uvicorn.Server(config)
if len(sys.argv) > 1:
    config.uds = sys.argv[1]
    server.run()
else:
    sockets = [socket.socket(fileno=3)]
    unix_fd = os.environ.get("FLEET_UNIX_FD")
    if unix_fd:
        sockets.append(socket.socket(fileno=int(unix_fd)))
    server.run(sockets=sockets)
