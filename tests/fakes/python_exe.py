#!/usr/bin/env python3
"""``python.exe`` on a Hyper-V host, for ``transport: local`` (test stand-in only, stdlib only): the
hvmigrate agent started as a local process there, and nothing else.

It is the local twin of what the WinRM stand-in does for the host's Python (agent_process.py): the
command line must be exactly the agent's (``-c <bootstrap> <length>``, the bootstrap equal to
agent_bundle.BOOTSTRAP, checked by the process holding the host model, tests/fakes/local_host.py, over
the socket ``HVMIGRATE_STANDIN_SOCKET`` names); the agent then runs with Windows' ``os`` as
tests/fakes/windows_site plays it, in a fresh folder holding one symbolic link per Windows name the host
publishes now (``\\\\.\\PhysicalDriveN`` of each mounted VHDX, ``C:``, ``D:``), so a disk that is not
mounted does not open. The agent replaces this process (exec): its stdin, stdout, exit code and a kill
are the caller's, as a local process's are.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile


def main(argv: list[str]) -> int:
    where = os.environ.get("HVMIGRATE_STANDIN_SOCKET")
    if not where:
        sys.stderr.write("python.exe stand-in: HVMIGRATE_STANDIN_SOCKET names no host model\n")
        return 255
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(where)
        stream = conn.makefile("rwb")
        stream.write(json.dumps({"kind": "agent", "argv": argv}).encode() + b"\n")
        stream.flush()
        answer = json.loads(stream.readline())
    if answer.get("problem"):
        sys.stderr.write(answer["problem"] + "\n")
        return 2
    workdir = tempfile.mkdtemp(prefix="agent-", dir=answer["workdirs"])
    for name, target in answer["names"].items():
        os.symlink(target, os.path.join(workdir, name))
    os.chdir(workdir)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    environment["PYTHONPATH"] = answer["site"]  # Windows' os, as tests/fakes/windows_python.py starts it
    os.execve(sys.executable, [sys.executable, *argv], environment)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
