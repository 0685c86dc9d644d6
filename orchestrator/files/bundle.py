"""The files agent as one shipped program, started by the disk agent's bootstrap (agent_bundle.py).

Same mechanism, its own module table: the files agent needs the rules, the tree code, the codec and the
frame protocol, and none of the block mirror.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

from orchestrator import __version__
from orchestrator.mirror import agent_bundle

FILES_MODULES: tuple[tuple[str, str | None, bool], ...] = (
    ("orchestrator", "orchestrator/__init__.py", True),
    ("orchestrator.mirror", None, True),
    ("orchestrator.mirror.errors", "orchestrator/mirror/errors.py", False),
    ("orchestrator.mirror.hashing", "orchestrator/mirror/hashing.py", False),
    ("orchestrator.mirror.portable_io", "orchestrator/mirror/portable_io.py", False),
    ("orchestrator.mirror.protocol", "orchestrator/mirror/protocol.py", False),
    ("orchestrator.files", "orchestrator/files/__init__.py", True),
    ("orchestrator.files.rules", "orchestrator/files/rules.py", False),
    ("orchestrator.files.codec", "orchestrator/files/codec.py", False),
    ("orchestrator.files.case", "orchestrator/files/case.py", False),
    ("orchestrator.files.tree", "orchestrator/files/tree.py", False),
    ("orchestrator.files.watch", "orchestrator/files/watch.py", False),
    ("orchestrator.files.replicate_source", "orchestrator/files/replicate_source.py", False),
    ("orchestrator.files.agent", "orchestrator/files/agent.py", False),
)


def program_source() -> str:
    entries = []
    for name, relative, is_package in FILES_MODULES:
        source = (
            (agent_bundle.ROOT / relative).read_text()
            if relative
            else '"""Shipped with the files agent."""\n'
        )
        entries.append(f"    {name!r}: ({is_package!r}, {source!r}),")
    loader = agent_bundle._LOADER.replace("import orchestrator.agent", "import orchestrator.files.agent")
    loader = loader.replace("orchestrator.agent.main()", "orchestrator.files.agent.main()")
    header = f"# hvmigrate files agent {__version__}\n"
    return header + "_SOURCES = {\n" + "\n".join(entries) + "\n}\n" + loader


@lru_cache(maxsize=1)
def files_agent_program() -> bytes:
    return zlib.compress(program_source().encode(), 9)
