"""Runs one uvicorn worker of app.py on a listening socket handed over as fd 3 (the harness
binds it on 127.0.0.1:0, so no port is ever guessed), or on a Unix socket path given as the
first argument. The same as `uvicorn app:app --port N` otherwise: uvloop, httptools, no
access log. (`uvicorn --fd` would take the socket for a Unix one and leave Nagle on.)
"""

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
    server.run(sockets=[socket.socket(fileno=3)])
