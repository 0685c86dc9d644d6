"""Secret references (``${env:NAME}``, ``${file:PATH}``) that can be used but never shown.

A `Secret` prints as ``***`` everywhere (repr, str, JSON, plan, journal), so it cannot leak by accident
through an f-string or a model dump. Every value that was revealed is also remembered, so `redact` can
scrub it from any free text (a provider's error message, a script's output) before that text is logged.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

MASK = "***"
_REF_RE = re.compile(r"^\$\{(env|file):([^}]+)\}$")
_known_values: set[str] = set()
_lock = threading.Lock()


class Secret:
    """A credential; ``reveal()`` is the only way to its value."""

    __slots__ = ("_value", "reference")

    def __init__(self, value: str, reference: str | None = None) -> None:
        self._value = value
        self.reference = reference  # "${env:X}" or None when written in clear in the playbook
        if value:
            with _lock:
                _known_values.add(value)

    @property
    def in_clear(self) -> bool:
        """True when the playbook holds the secret itself rather than a reference to it."""
        return self.reference is None

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.reference or MASK)


def resolve(text: str, base_dir: Path | None = None) -> Secret:
    """Resolve a reference; the error names the variable or file, never a value."""
    match = _REF_RE.match(text.strip())
    if not match:
        if text.strip().startswith("${"):
            raise ValueError("a secret reference must be ${env:NAME} or ${file:PATH}")
        return Secret(text)
    kind, name = match.groups()
    if kind == "env":
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set (referenced as ${{env:{name}}})")
        return Secret(os.environ[name], text)
    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        return Secret(path.read_text().rstrip("\r\n"), text)
    except FileNotFoundError:
        raise ValueError(f"secret file {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"secret file {path} cannot be read: {exc.strerror}") from None


def redact(text: str) -> str:
    """Replace every secret value this process has revealed with ``***``."""
    with _lock:
        values = sorted(_known_values, key=len, reverse=True)
    for value in values:
        if len(value) >= 3 and value in text:
            text = text.replace(value, MASK)
    return text


_secret_base_dir: threading.local = threading.local()


def _to_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string or a ${env:NAME} / ${file:PATH} reference")
    return resolve(value, getattr(_secret_base_dir, "path", None))


def set_base_dir(path: Path | None) -> None:
    """Where ``${file:relative}`` is resolved from while a playbook is being loaded (its own folder)."""
    _secret_base_dir.path = path


SecretStr = Annotated[
    Secret,
    PlainValidator(_to_secret),
    PlainSerializer(lambda s: MASK, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "a ${env:NAME} or ${file:PATH} reference (or, "
            "discouraged, the secret itself); always shown as ***",
        }
    ),
]
