"""The agent as one shipped program, and the one-line bootstrap that starts it on the far end.

The agent (orchestrator/agent.py) imports the stdlib-only mirror modules it shares with the orchestrator
(block map, target writer, protocol), so the map format and the crash-safety rules exist once. At ship time
those modules and the agent are joined into a single program: a table of their sources and a tiny import
hook that serves them, installed first in ``sys.meta_path`` so nothing on the far host (an old hvmigrate,
a stray ``orchestrator`` directory) can shadow them.

``python3 -`` cannot carry it: Python reads a script from stdin to EOF before running any of it, and the
same stdin must then carry the protocol. So the agent starts as ``python3 -c BOOTSTRAP N``: the bootstrap
reads exactly N bytes (the zlib-compressed program) from fd 0 without buffering past them, and exec()s
them; fd 0 and fd 1 then carry frames.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path

from orchestrator import __version__

from . import protocol

ROOT = Path(__file__).resolve().parents[2]

# (module, file relative to the repository, is a package); in import order
SHIPPED_MODULES: tuple[tuple[str, str | None, bool], ...] = (
    ("orchestrator", "orchestrator/__init__.py", True),
    ("orchestrator.mirror", None, True),  # its real __init__ pulls in the orchestrator's side: not shipped
    ("orchestrator.mirror.errors", "orchestrator/mirror/errors.py", False),
    ("orchestrator.mirror.hashing", "orchestrator/mirror/hashing.py", False),
    ("orchestrator.mirror.portable_io", "orchestrator/mirror/portable_io.py", False),
    ("orchestrator.mirror.file_reader", "orchestrator/mirror/file_reader.py", False),
    ("orchestrator.mirror.blockmap", "orchestrator/mirror/blockmap.py", False),
    ("orchestrator.mirror.nbd", "orchestrator/mirror/nbd.py", False),
    ("orchestrator.mirror.writer", "orchestrator/mirror/writer.py", False),
    ("orchestrator.mirror.device_reader", "orchestrator/mirror/device_reader.py", False),
    ("orchestrator.mirror.protocol", "orchestrator/mirror/protocol.py", False),
    ("orchestrator.agent", "orchestrator/agent.py", False),
)

BOOTSTRAP = (
    "import os,sys,zlib\n"
    "n=int(sys.argv[1]);b=b''\n"
    "while len(b)<n:\n"
    " c=os.read(0,n-len(b))\n"
    " if not c:sys.exit('hvmigrate agent: the stream ended before the agent program did')\n"
    " b+=c\n"
    "exec(compile(zlib.decompress(b),'hvmigrate-agent','exec'))\n"
)

_LOADER = '''
import sys


class _AgentModules:
    """Serves the modules above, and only them, ahead of every other finder."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in _SOURCES:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(name, cls, is_package=_SOURCES[name][0])

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        is_package, source = _SOURCES[module.__name__]
        filename = "<hvmigrate-agent>/" + module.__name__.replace(".", "/") + ".py"
        exec(compile(source, filename, "exec"), module.__dict__)


sys.meta_path.insert(0, _AgentModules)
for _name in list(sys.modules):
    if _name == "orchestrator" or _name.startswith("orchestrator."):
        del sys.modules[_name]
import orchestrator.agent

sys.exit(orchestrator.agent.main())
'''


def program_source(*, protocol_version: int | None = None) -> str:
    """The agent program as Python source. ``protocol_version`` builds an agent that claims another
    protocol version (how the tests check that a mismatch is refused on both ends)."""
    entries = []
    for name, relative, is_package in SHIPPED_MODULES:
        source = (ROOT / relative).read_text() if relative else '"""Shipped with the hvmigrate agent."""\n'
        if name == "orchestrator.mirror.protocol" and protocol_version is not None:
            source += f"\nPROTOCOL_VERSION = {int(protocol_version)}\n"
        entries.append(f"    {name!r}: ({is_package!r}, {source!r}),")
    version = protocol_version or protocol.PROTOCOL_VERSION
    header = f"# hvmigrate agent {__version__}, protocol {version}, built by {Path(__file__).name}\n"
    return header + "_SOURCES = {\n" + "\n".join(entries) + "\n}\n" + _LOADER


@lru_cache(maxsize=4)
def agent_program(*, protocol_version: int | None = None) -> bytes:
    """What the bootstrap reads: the program, zlib-compressed (about a quarter of its size)."""
    return zlib.compress(program_source(protocol_version=protocol_version).encode(), 9)


def bootstrap_args(program: bytes) -> list[str]:
    """Arguments after the interpreter (``python3``) that start the agent reading ``program`` from stdin."""
    return ["-c", BOOTSTRAP, str(len(program))]
