# ruff: noqa: E501
"""A strict interpreter for the small PowerShell dialect hvmigrate sends over WinRM (test stand-in only).

Real Windows runs anything; this runs exactly the script shapes the Hyper-V provider and the WinRM
transport produce, and refuses the rest, so a test passing here says the provider stayed inside them:

    <PRELUDE: $ErrorActionPreference, $ProgressPreference, Set-StrictMode, and
     $hv = [...]::UTF8.GetString([...]::FromBase64String('<base64 JSON>')) | ConvertFrom-Json>
    statement*   where statement is   $var = pipeline   or   pipeline
    pipeline     command ('|' command)*  or  an expression
    command      Verb-Noun (-Parameter [value])*        named parameters only, no positional ones
    value        'single-quoted' | 123 | $var(.Prop)* | $true | $false | $null | bareword (argument mode)
                 | @( pipeline ) | ( pipeline ) | @{ Key = value; ... } | [pscustomobject]@{ ... } | a, b

No double-quoted strings (they expand variables), no script blocks, no loops, no comments: user values
reach the script only through ``$hv``, so a VM name holding quotes, ``$`` or ``;`` stays data. Cmdlets and
their parameters come from a registry (see hyperv_host.py) built from Microsoft's documentation; an unknown
cmdlet, an unknown parameter, a positional argument or a value of the wrong type fails as PowerShell fails:
as a terminating error (the prelude sets ``$ErrorActionPreference = 'Stop'``) that the WinRM endpoint
reports as CLIXML on stderr with exit code 1.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PRELUDE_RE = re.compile(
    r"\A\$ErrorActionPreference = 'Stop'\n"
    r"\$ProgressPreference = 'SilentlyContinue'\n"
    r"Set-StrictMode -Version 2\.0\n"
    r"\$hv = \[System\.Text\.Encoding\]::UTF8\.GetString\(\[System\.Convert\]::FromBase64String\("
    r"'(?P<data>[A-Za-z0-9+/=]*)'\)\) \| ConvertFrom-Json\n"
)
MAX_PIPELINE = 8  # commands in one pipeline; the provider never needs more


class PSError(Exception):
    """A PowerShell error record: what the endpoint turns into CLIXML on stderr."""

    def __init__(
        self, message: str, *, category: str = "InvalidArgument", error_id: str = "", cmdlet: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = category
        self.error_id = error_id or "Microsoft.PowerShell.Commands.WriteErrorException"
        self.cmdlet = cmdlet
        self.line = 0
        self.text = ""


class PSObject(dict):
    """A .NET object as scripts see it: a type name and case-insensitive properties."""

    def __init__(self, type_name: str, props: dict[str, Any]) -> None:
        super().__init__(props)
        self.type_name = type_name

    def get_prop(self, name: str) -> Any:
        for key, value in self.items():
            if key.lower() == name.lower():
                return value
        raise PSError(
            f"The property '{name}' cannot be found on this object. Verify that the property exists.",
            category="NotSpecified",
            error_id="PropertyNotFoundStrict",
        )


# ---------------------------------------------------------------- parameter types


@dataclass(frozen=True)
class Param:
    type: str  # string, string[], int16, int32, int64, uint64, bool, switch, enum, object, char
    enum: tuple[str, ...] = ()
    enum_type: str = ""
    minimum: int | None = None
    maximum: int | None = None


@dataclass
class Cmdlet:
    name: str
    params: dict[str, Param]
    run: Callable[[dict[str, Any], list[Any]], list[Any]]
    required: tuple[str, ...] = ()
    pipeline: str | None = None  # None: no input; "any": the whole input list; else bind each item to it
    by_value: str | None = None  # the .NET type name an item must have to bind to ``pipeline``


_INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1, "System.Int16"),
    "int32": (-(2**31), 2**31 - 1, "System.Int32"),
    "int64": (-(2**63), 2**63 - 1, "System.Int64"),
    "uint64": (0, 2**64 - 1, "System.UInt64"),
}


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "System.Boolean"
    if isinstance(value, int):
        return "System.Int32" if -(2**31) <= value < 2**31 else "System.Int64"
    if isinstance(value, str):
        return "System.String"
    if isinstance(value, list):
        return "System.Object[]"
    if isinstance(value, PSObject):
        return value.type_name
    return "System.Management.Automation.PSCustomObject"


def convert(cmdlet: str, name: str, spec: Param, value: Any) -> Any:
    """Bind ``value`` to parameter ``name`` as PowerShell's binder would, or raise its error."""

    def fail(detail: str) -> PSError:
        return PSError(
            f"Cannot bind parameter '{name}'. {detail}",
            error_id=f"CannotConvertArgumentNoMessage,{cmdlet}",
            cmdlet=cmdlet,
        )

    if spec.type == "string[]":
        items = value if isinstance(value, list) else [value]
        return [convert(cmdlet, name, Param("string"), item) for item in items]
    if isinstance(value, list) and spec.type != "object":
        raise fail(f'Cannot convert "{_type_of(value)}" to the type "{spec.type}" required by parameter.')
    if spec.type == "string":
        if value is None:
            return ""
        if isinstance(value, PSObject | dict):
            raise fail(f'Cannot convert "{_type_of(value)}" to the type "System.String".')
        return "True" if value is True else "False" if value is False else str(value)
    if spec.type in _INT_RANGES:
        low, high, dotnet = _INT_RANGES[spec.type]
        number: int
        if isinstance(value, bool) or value is None or isinstance(value, dict):
            raise fail(f'Cannot convert value "{value}" to type "{dotnet}".')
        if isinstance(value, str):
            if not re.fullmatch(r"\s*[+-]?\d+\s*", value):
                raise fail(
                    f'Cannot convert value "{value}" to type "{dotnet}". Error: "Input string was not in '
                    'a correct format."'
                )
            number = int(value)
        else:
            number = int(value)
        if not low <= number <= high:
            raise fail(
                f'Cannot convert value "{value}" to type "{dotnet}". Error: "Value was either too '
                f'large or too small for {dotnet.split(".")[1]}."'
            )
        if (spec.minimum is not None and number < spec.minimum) or (
            spec.maximum is not None and number > spec.maximum
        ):
            raise PSError(
                f"Cannot validate argument on parameter '{name}'. The {number} argument is "
                f"{'less than the minimum' if spec.minimum is not None and number < spec.minimum else 'greater than the maximum'}"
                f" allowed range of {spec.minimum if spec.minimum is not None and number < spec.minimum else spec.maximum}."
                " Supply an argument that is within the range and then try the command again.",
                error_id=f"ParameterArgumentValidationError,{cmdlet}",
                cmdlet=cmdlet,
            )
        return number
    if spec.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value != 0
        raise fail(
            f'Cannot convert "{_type_of(value)}" to "System.Boolean". Boolean parameters accept only Boolean '
            "values and numbers, such as $True, $False, 1 or 0."
        )
    if spec.type == "enum":
        if isinstance(value, str):
            for option in spec.enum:
                if option.lower() == value.lower():
                    return option
        raise fail(
            f'Cannot convert value "{value}" to type "{spec.enum_type}". Error: "Unable to match the '
            f"identifier name {value} to a valid enumerator name. Specify one of the following enumerator "
            f'names and try again: {", ".join(spec.enum)}"'
        )
    if spec.type == "object":
        return value
    raise AssertionError(spec.type)


# ---------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(
    r"""
    (?P<nl>[\n;])
  | (?P<ws>[ \t]+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<cast>\[pscustomobject\])
  | (?P<var>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<member>(?<=[A-Za-z0-9_)])\.[A-Za-z_][A-Za-z0-9_]*)
  | (?P<param>(?<![A-Za-z0-9_])-[A-Za-z][A-Za-z0-9]*)
  | (?P<number>\d+(?![A-Za-z0-9_]))
  | (?P<word>[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z][A-Za-z0-9]*)?)
  | (?P<op>@\(|@\{|[()|=,}])
    """,
    re.VERBOSE | re.IGNORECASE,
)


@dataclass
class Token:
    kind: str
    text: str
    line: int


def tokenize(body: str, first_line: int) -> list[Token]:
    tokens: list[Token] = []
    pos, line = 0, first_line
    while pos < len(body):
        match = _TOKEN_RE.match(body, pos)
        if match is None:
            error = PSError(
                f"Unexpected token '{body[pos : pos + 20].splitlines()[0] if body[pos : pos + 20].strip() else body[pos]}'"
                " in expression or statement (the stand-in accepts only hvmigrate's script grammar).",
                category="ParserError",
                error_id="UnexpectedToken",
            )
            error.line = line
            raise error
        kind = match.lastgroup or ""
        text = match.group()
        if kind != "ws":
            tokens.append(Token(kind, text, line))
        if kind == "nl" and text == "\n":
            line += 1
        pos = match.end()
    tokens.append(Token("eof", "", line))
    return tokens


# ---------------------------------------------------------------- parse and run


@dataclass
class Interpreter:
    cmdlets: dict[str, Cmdlet]
    variables: dict[str, Any] = field(default_factory=dict)
    output: list[Any] = field(default_factory=list)
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (cmdlet, bound params) as run

    def run_script(self, script: str) -> list[Any]:
        """Run a whole script (prelude + body); output objects are returned, errors raise PSError."""
        script = script.replace("\r\n", "\n")
        match = PRELUDE_RE.match(script)
        if match is None:
            raise PSError(
                "The script does not start with hvmigrate's prelude (ErrorActionPreference, StrictMode, the $hv "
                "data block); the stand-in runs nothing else.",
                category="ParserError",
                error_id="MissingPrelude",
            )
        try:
            data = base64.b64decode(match.group("data"), validate=True).decode("utf-8")
            self.variables["hv"] = _from_json(json.loads(data))
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise PSError(
                f"Conversion from JSON failed with error: {exc}", error_id="ConvertFromJson"
            ) from None
        self.variables.update({"true": True, "false": False, "null": None})
        first_line = script[: match.end()].count("\n") + 1
        body = script[match.end() :]
        self._lines = body.split("\n")
        self._first = first_line
        self._tokens = tokenize(body, first_line)
        self._pos = 0
        while self._peek().kind != "eof":
            if self._peek().kind == "nl":
                self._pos += 1
                continue
            statement_line = self._peek().line
            try:
                self._statement()
            except PSError as error:
                if not error.line:
                    error.line = statement_line
                    error.text = self._lines[statement_line - first_line]
                raise
        return self.output

    # -- token helpers
    def _peek(self, ahead: int = 0) -> Token:
        return self._tokens[min(self._pos + ahead, len(self._tokens) - 1)]

    def _take(self, kind: str | None = None, text: str | None = None) -> Token:
        token = self._peek()
        if (kind and token.kind != kind) or (text and token.text.lower() != text.lower()):
            raise PSError(
                f"Unexpected token '{token.text or 'end of script'}' in expression or statement.",
                category="ParserError",
                error_id="UnexpectedToken",
            )
        self._pos += 1
        return token

    # -- grammar
    def _statement(self) -> None:
        if self._peek().kind == "var" and self._peek(1).text == "=":
            name = self._take("var").text[1:].lower()
            self._take(text="=")
            value = self._pipeline()
            if name in ("true", "false"):
                raise PSError(f"Cannot overwrite variable {name} because it is read-only or constant.")
            if name != "null":
                self.variables[name] = value[0] if len(value) == 1 else value
        else:
            self.output.extend(self._pipeline())
        if self._peek().kind not in ("nl", "eof"):
            self._take("nl")

    def _pipeline(self) -> list[Any]:
        if self._peek().kind == "word":
            items = self._command(None)
        else:
            items = _enumerate(self._value(argument_mode=False))
        count = 1
        while self._peek().text == "|":
            self._take(text="|")
            count += 1
            if count > MAX_PIPELINE:
                raise PSError("The pipeline is longer than the stand-in accepts.", category="ParserError")
            items = self._command(items)
        return items

    def _command(self, piped: list[Any] | None) -> list[Any]:
        token = self._take("word")
        cmdlet = self.cmdlets.get(token.text.lower())
        if cmdlet is None:
            raise PSError(
                f"The term '{token.text}' is not recognized as the name of a cmdlet, function, script file, "
                "or operable program. Check the spelling of the name, or if a path was included, verify that "
                "the path is correct and try again.",
                category="ObjectNotFound",
                error_id="CommandNotFoundException",
            )
        given: dict[str, Any] = {}
        while self._peek().kind not in ("nl", "eof") and self._peek().text not in ("|", ")"):
            if self._peek().kind != "param":
                value = self._value(argument_mode=True)
                raise PSError(
                    f"A positional parameter cannot be found that accepts argument '{_display(value)}'.",
                    error_id=f"PositionalParameterNotFound,{cmdlet.name}",
                    cmdlet=cmdlet.name,
                )
            name = self._take("param").text[1:]
            has_value = self._peek().kind not in ("nl", "eof", "param") and self._peek().text not in (
                "|",
                ")",
            )
            given[name] = self._value(argument_mode=True) if has_value else _SWITCH
        return self._invoke(cmdlet, given, piped)

    def _value(self, *, argument_mode: bool) -> Any:
        first = self._primary(argument_mode)
        if self._peek().text != ",":
            return first
        items = [first]
        while self._peek().text == ",":
            self._take(text=",")
            items.append(self._primary(argument_mode))
        return items

    def _primary(self, argument_mode: bool) -> Any:
        token = self._peek()
        if token.kind == "string":
            self._pos += 1
            return token.text[1:-1].replace("''", "'")
        if token.kind == "number":
            self._pos += 1
            return int(token.text)
        if token.kind == "var":
            self._pos += 1
            name = token.text[1:].lower()
            if name not in self.variables:
                raise PSError(
                    f"The variable '${token.text[1:]}' cannot be retrieved because it has not been set.",
                    category="InvalidOperation",
                    error_id="VariableIsUndefined",
                )
            value = self.variables[name]
            while self._peek().kind == "member":
                prop = self._take("member").text[1:]
                value = _member(value, prop)
            return value
        if token.kind == "word" and argument_mode:
            self._pos += 1
            return token.text
        if token.text == "@(":
            self._take(text="@(")
            items = [] if self._peek().text == ")" else self._pipeline()
            self._take(text=")")
            return list(items)
        if token.text == "(":
            self._take(text="(")
            items = self._pipeline()
            self._take(text=")")
            return items[0] if len(items) == 1 else (items if items else None)
        if token.kind == "cast":
            self._pos += 1
            return PSObject("System.Management.Automation.PSCustomObject", self._hashtable())
        if token.text == "@{":
            return PSObject("System.Collections.Hashtable", self._hashtable())
        raise PSError(
            f"Unexpected token '{token.text or 'end of script'}' in expression or statement.",
            category="ParserError",
            error_id="UnexpectedToken",
        )

    def _hashtable(self) -> dict[str, Any]:
        self._take(text="@{")
        table: dict[str, Any] = {}
        while True:
            while self._peek().kind == "nl":
                self._pos += 1
            if self._peek().text == "}":
                self._pos += 1
                return table
            key = self._take("word").text
            self._take(text="=")
            table[key] = self._value(argument_mode=False)

    def _invoke(self, cmdlet: Cmdlet, given: dict[str, Any], piped: list[Any] | None) -> list[Any]:
        bound: dict[str, Any] = {}
        for raw, value in given.items():
            spec_name = next((p for p in cmdlet.params if p.lower() == raw.lower()), None)
            if spec_name is None:
                raise PSError(
                    f"A parameter cannot be found that matches parameter name '{raw}'.",
                    error_id=f"NamedParameterNotFound,{cmdlet.name}",
                    cmdlet=cmdlet.name,
                )
            spec = cmdlet.params[spec_name]
            if spec.type == "switch":
                if value is not _SWITCH:
                    raise PSError(
                        f"A positional parameter cannot be found that accepts argument '{_display(value)}'.",
                        error_id=f"PositionalParameterNotFound,{cmdlet.name}",
                        cmdlet=cmdlet.name,
                    )
                bound[spec_name] = True
                continue
            if value is _SWITCH:
                raise PSError(
                    f"Missing an argument for parameter '{spec_name}'. Specify a parameter of type "
                    f"'{spec.type}' and try again.",
                    error_id=f"MissingArgument,{cmdlet.name}",
                    cmdlet=cmdlet.name,
                )
            bound[spec_name] = convert(cmdlet.name, spec_name, spec, value)
        if piped is not None and cmdlet.pipeline is None:
            raise PSError(
                f"The input object cannot be bound to any parameters for the command ({cmdlet.name}) either "
                "because the command does not take pipeline input or the input and its properties do not "
                "match any of the parameters that take pipeline input.",
                error_id=f"InputObjectNotBound,{cmdlet.name}",
                cmdlet=cmdlet.name,
            )
        if piped is None or cmdlet.pipeline == "any":
            self._check_required(cmdlet, bound, piped)
            self.log.append((cmdlet.name, dict(bound)))
            return cmdlet.run(bound, piped or [])
        out: list[Any] = []
        for item in piped:
            per_item = dict(bound)
            per_item[cmdlet.pipeline] = self._bind_item(cmdlet, item)
            self._check_required(cmdlet, per_item, piped)
            self.log.append((cmdlet.name, dict(per_item)))
            out.extend(cmdlet.run(per_item, []))
        return out

    def _bind_item(self, cmdlet: Cmdlet, item: Any) -> Any:
        assert cmdlet.pipeline is not None
        if cmdlet.by_value and isinstance(item, PSObject) and item.type_name == cmdlet.by_value:
            return item
        if not cmdlet.by_value and isinstance(item, PSObject):
            spec = cmdlet.params[cmdlet.pipeline]
            return convert(cmdlet.name, cmdlet.pipeline, spec, item.get_prop(cmdlet.pipeline))
        raise PSError(
            f"The input object cannot be bound to any parameters for the command ({cmdlet.name}) either "
            "because the command does not take pipeline input or the input and its properties do not match "
            "any of the parameters that take pipeline input.",
            error_id=f"InputObjectNotBound,{cmdlet.name}",
            cmdlet=cmdlet.name,
        )

    @staticmethod
    def _check_required(cmdlet: Cmdlet, bound: dict[str, Any], piped: list[Any] | None) -> None:
        for name in cmdlet.required:
            if name not in bound:
                raise PSError(
                    f"Cannot process command because of one or more missing mandatory parameters: {name}.",
                    error_id=f"MissingMandatoryParameter,{cmdlet.name}",
                    cmdlet=cmdlet.name,
                )


class _Switch:
    def __repr__(self) -> str:
        return "<switch>"


_SWITCH = _Switch()


def _display(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _enumerate(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _member(value: Any, prop: str) -> Any:
    if isinstance(value, PSObject):
        return value.get_prop(prop)
    if isinstance(value, list):
        if prop.lower() in ("count", "length"):
            return len(value)
        return [_member(item, prop) for item in value]
    if isinstance(value, str) and prop.lower() == "length":
        return len(value)
    raise PSError(
        f"The property '{prop}' cannot be found on this object. Verify that the property exists.",
        category="NotSpecified",
        error_id="PropertyNotFoundStrict",
    )


def _from_json(value: Any) -> Any:
    """ConvertFrom-Json's result: objects become PSCustomObjects, arrays Object[]."""
    if isinstance(value, dict):
        return PSObject(
            "System.Management.Automation.PSCustomObject", {k: _from_json(v) for k, v in value.items()}
        )
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def to_json(value: Any, depth: int, *, enums: Callable[[Any], Any] = lambda v: v) -> Any:
    """ConvertTo-Json's view of a value: objects past ``depth`` become their type name, as in 5.1."""
    if isinstance(value, dict):
        if depth < 0:
            return getattr(value, "type_name", "System.Collections.Hashtable")
        return {k: to_json(v, depth - 1, enums=enums) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v, depth - 1, enums=enums) for v in value]
    return enums(value)
