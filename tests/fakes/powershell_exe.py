#!/usr/bin/env python3
"""``powershell.exe`` on a Hyper-V host, standing in for Windows PowerShell 5.1 when the orchestrator runs
on the host itself (``transport: local``; test stand-in only, stdlib only).

It takes exactly the command line orchestrator/transport/local_powershell.py starts: ``-NoProfile``,
``-NonInteractive`` and ``-EncodedCommand <base64 UTF-16LE>`` (names case-insensitive, as PowerShell
reads them). powershell.exe's other parameters (``-ExecutionPolicy``, ``-Command``, ``-File``, ...) are
refused, as nothing here sends them; an argument powershell.exe does not know is refused as it refuses
one: Windows PowerShell takes it as the start of a command, which then is not recognized (exit 1).
The decoded script goes, with the flags, to the process that holds the host model
(tests/fakes/local_host.py) over the Unix socket named by ``HVMIGRATE_STANDIN_SOCKET``, and runs there
through the same interpreter, against the same model, as a script the WinRM stand-in received: its stdout,
its CLIXML error record on stderr and its exit code come back and are this process's own. The model is in
memory in that process (its guests, locks and the failures a test injects), so it is shared through that
socket rather than re-read from files; its VHDX files are the real files the WinRM stand-in uses.

Standard input is read only when the script is the fixed bootstrap that reads it (a script too long for
the command line), as PowerShell reads it only then.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import sys

FLAGS = {"-noprofile": "-NoProfile", "-noninteractive": "-NonInteractive"}
ENCODED = "-encodedcommand"
OTHER_OPTIONS = {  # powershell.exe's other parameters (about_PowerShell_exe), refused by the stand-in
    "executionpolicy",
    "ex",
    "ep",
    "inputformat",
    "outputformat",
    "nologo",
    "noexit",
    "windowstyle",
    "sta",
    "mta",
    "version",
    "psconsolefile",
    "configurationname",
    "encodedarguments",
    "help",
    "?",
}


def _clixml(text: str) -> bytes:
    from xml.sax.saxutils import escape

    lines = "".join(f'<S S="Error">{escape(line)}_x000D__x000A_</S>' for line in text.split("\n") if line)
    return (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        + lines
        + "</Objs>"
    ).encode("utf-8")


def _refuse(stderr: bytes, code: int = 1) -> int:
    sys.stderr.buffer.write(stderr)
    sys.stderr.buffer.flush()
    return code


def parse(argv: list[str]) -> tuple[list[str], str] | bytes:
    """(the flags given, the encoded script), or what powershell.exe writes to stderr refusing them."""
    flags: list[str] = []
    encoded: str | None = None
    index = 0
    while index < len(argv):
        word = argv[index]
        lower = word.lower()
        if lower in FLAGS and FLAGS[lower] not in flags:
            flags.append(FLAGS[lower])
        elif lower == ENCODED and encoded is None:
            if index + 1 >= len(argv):
                return (
                    b"Cannot process the command because of a missing parameter. "
                    b"A command must follow -EncodedCommand.\r\n"
                )
            encoded = argv[index + 1]
            index += 1
        elif lower in ("-command", "-c", "-file", "-f"):
            return f"The stand-in runs only -EncodedCommand scripts, not {word}.\r\n".encode()
        elif lower.lstrip("-/") in OTHER_OPTIONS:  # real, but never sent: a change here must be seen
            return f"The stand-in does not accept the powershell option '{word}'.\r\n".encode()
        else:  # Windows PowerShell reads an unknown argument as the start of a command
            return (
                f"{word} : The term '{word}' is not recognized as the name of a cmdlet, function, script "
                "file, or operable program. Check the spelling of the name, or if a path was included, "
                "verify that the path is correct and try again.\r\n"
            ).encode()
        index += 1
    if encoded is None:
        return b"The stand-in runs only -EncodedCommand scripts.\r\n"
    return flags, encoded


def main(argv: list[str]) -> int:
    parsed = parse(argv)
    if isinstance(parsed, bytes):
        return _refuse(parsed)
    flags, encoded = parsed
    try:
        script = base64.b64decode(encoded, validate=True).decode("utf-16-le")
    except (binascii.Error, UnicodeDecodeError):
        return _refuse(
            _clixml(
                "Cannot process the command because the value specified with -EncodedCommand is not "
                "properly encoded. The value must be Base64 encoded."
            )
        )
    where = os.environ.get("HVMIGRATE_STANDIN_SOCKET")
    if not where:
        return _refuse(b"powershell.exe stand-in: HVMIGRATE_STANDIN_SOCKET names no host model\r\n", 255)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(where)
        stream = conn.makefile("rwb")
        stream.write(json.dumps({"kind": "script", "flags": flags, "script": script}).encode() + b"\n")
        stream.flush()
        answer = json.loads(stream.readline())
        if answer.get("stdin"):  # the bootstrap that reads the script from standard input
            data = sys.stdin.buffer.read() if sys.stdin is not None else b""
            stream.write(json.dumps({"stdin": base64.b64encode(data).decode()}).encode() + b"\n")
            stream.flush()
            answer = json.loads(stream.readline())
    sys.stdout.buffer.write(base64.b64decode(answer["stdout"]))
    sys.stderr.buffer.write(base64.b64decode(answer["stderr"]))
    sys.stdout.flush()
    sys.stderr.flush()
    return int(answer["code"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
