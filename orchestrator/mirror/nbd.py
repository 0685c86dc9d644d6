"""A small NBD client: enough of the protocol to write a replica volume that an NBD server exports.

A qcow2, VMDK or VHDX replica can only be written correctly by code that knows its format. qemu-nbd knows
every format qemu does and exports the disk the guest will see as plain blocks over a socket, in user
space (no nbd kernel module, no /dev/nbd*), so the writer only needs to speak NBD to fill any of them.

What is spoken: the fixed-newstyle handshake with NBD_OPT_GO (NBD_OPT_EXPORT_NAME when a server lacks
GO), and the commands READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC. When the server offers structured
replies and the ``base:allocation`` metadata context, BLOCK_STATUS too: it says which ranges read as
zeros, so a replica's holes are known without reading them back (a fresh 1 TiB qcow2 otherwise costs a
terabyte of zeros through the socket at the first pass and at every verify), and READ replies then
carry holes as a length instead of as zeros. Simple replies remain the fallback for servers without
them. One request is in flight at a time: a lock makes a client safe to share between the writer's
threads, and every request carries a whole chunk (split only at the server's maximum block size), so one
round trip per megabytes costs little. The reference is the protocol document of the NBD project
(https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md); URIs follow its uri.md.

Stdlib only and Python 3.8 compatible: it ships inside the agent (agent_bundle.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .errors import MirrorError

DEFAULT_PORT = 10809
HANDSHAKE_SECONDS = 30.0
IO_SECONDS = 600.0  # one request, a FLUSH of a large batch included, on slow storage
MAX_REQUEST = 32 * 1024**2  # what every server accepts (proto.md, "Block size constraints")
MAX_STATUS_REQUEST = 1 << 30  # BLOCK_STATUS has no payload: one request may cover much more
STRUCTURED_REPLIES = True  # ask for them (and so for BLOCK_STATUS); False: simple replies only

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OLDSTYLE_MAGIC = 0x0000420281861253
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1 << 0, 1 << 1  # handshake flags (server), echoed by the client

OPT_EXPORT_NAME, OPT_ABORT, OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 1, 2, 7, 8, 10
REP_ACK, REP_INFO, REP_META_CONTEXT = 1, 3, 4
REP_ERROR = 1 << 31
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_PLATFORM = (
    REP_ERROR + 1,
    REP_ERROR + 2,
    REP_ERROR + 3,
    REP_ERROR + 4,
)
REP_ERR_TLS_REQD, REP_ERR_UNKNOWN, REP_ERR_SHUTDOWN = REP_ERROR + 5, REP_ERROR + 6, REP_ERROR + 7
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3

# transmission flags
HAS_FLAGS, READ_ONLY, SEND_FLUSH, SEND_FUA = 1 << 0, 1 << 1, 1 << 2, 1 << 3
SEND_TRIM, SEND_WRITE_ZEROES = 1 << 5, 1 << 6

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 6
CMD_BLOCK_STATUS = 7
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE = 1 << 0, 1 << 1

# structured replies: chunk flags and types; base:allocation states
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REPLY_TYPE_BLOCK_STATUS = 0, 1, 2, 5
REPLY_TYPE_ERROR_BIT = 1 << 15
STATE_HOLE, STATE_ZERO = 1 << 0, 1 << 1
ALLOCATION_CONTEXT = b"base:allocation"

_OPTION = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REST = struct.Struct(">IQ")  # after the magic: error, handle
_CHUNK_REST = struct.Struct(">HHQI")  # after the magic: flags, type, handle, length
_MAX_OPTION_REPLY = 64 * 1024

UNIX_SCHEMES = ("nbd+unix",)
TCP_SCHEMES = ("nbd", "nbd+tcp")
_UNSUPPORTED_SCHEMES = ("nbds", "nbds+unix", "nbd+vsock", "nbds+vsock")

_REFUSALS = {
    REP_ERR_UNKNOWN: "has no export named {name!r}: check the export name in the URI (qemu-nbd "
    "--export-name) and run again",
    REP_ERR_POLICY: "refused the export {name!r} by policy{text}: check the server's configuration "
    "(qemu-nbd --shared for more than one client) and run again",
    REP_ERR_TLS_REQD: "requires TLS for the export {name!r}, which this client does not speak: export it "
    "without --tls-creds on a socket only the writer can reach",
    REP_ERR_SHUTDOWN: "is shutting down: start the export again and run again",
    REP_ERR_PLATFORM: "cannot serve the export {name!r} on its platform{text}: check the server",
}


class NbdError(MirrorError):
    """The export cannot be used at all (no server, refused, read-only, not NBD): nothing was written."""


@dataclass(frozen=True)
class NbdAddress:
    """Where an export is: a Unix socket or a TCP host and port, and the export's name on that server."""

    export: str
    socket_path: str | None = None
    host: str | None = None
    port: int = DEFAULT_PORT

    @property
    def where(self) -> str:
        if self.socket_path is not None:
            return f"unix socket {self.socket_path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def uri(self) -> str:
        if self.socket_path is not None:
            return f"nbd+unix:///{quote(self.export)}?socket={quote(self.socket_path)}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{quote(self.export)}"


def _scheme(target: str | os.PathLike[str]) -> str:
    text = os.fspath(target)
    scheme, colon, rest = text.partition(":")
    return scheme.lower() if colon and rest.startswith("/") else ""


def is_nbd_uri(target: str | os.PathLike[str]) -> bool:
    """True for an NBD URI (``nbd+unix:///EXPORT?socket=PATH``, ``nbd://HOST:PORT/EXPORT``), also after
    ``pathlib.Path`` folded its double slashes (``Path("nbd://h/x")`` reads ``nbd:/h/x``)."""
    scheme = _scheme(target)
    return scheme in UNIX_SCHEMES or scheme in TCP_SCHEMES or scheme in _UNSUPPORTED_SCHEMES


def parse_nbd_uri(target: str | os.PathLike[str]) -> NbdAddress:
    """The address in an NBD URI, or an NbdError saying what is wrong with it."""
    text = os.fspath(target)
    scheme = _scheme(text)
    if scheme in _UNSUPPORTED_SCHEMES:
        raise NbdError(
            f"{text}: {scheme} URIs (TLS or vsock) are not supported: export the volume on a Unix socket "
            "(nbd+unix:///EXPORT?socket=PATH) or plain TCP (nbd://HOST:PORT/EXPORT)"
        )
    if scheme not in UNIX_SCHEMES and scheme not in TCP_SCHEMES:
        raise NbdError(
            f"{text} is not an NBD URI: use nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT"
        )
    rest = text.split(":", 1)[1]
    if not rest.startswith("//"):  # pathlib folded "//" into "/": put back what the scheme implies
        rest = ("//" if scheme in UNIX_SCHEMES else "/") + rest
    parts = urlsplit(f"{scheme}:{rest}")
    export = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    query = parse_qs(parts.query)
    if scheme in UNIX_SCHEMES:
        sockets = query.get("socket")
        if not sockets or not sockets[0]:
            raise NbdError(f"{text} names no socket: add ?socket=PATH (the path given to qemu-nbd --socket)")
        return NbdAddress(export=export, socket_path=sockets[0])
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise NbdError(f"{text} has an invalid port: use nbd://HOST:PORT/EXPORT") from None
    if not parts.hostname:
        raise NbdError(f"{text} names no host: use nbd://HOST:PORT/EXPORT")
    return NbdAddress(export=export, host=parts.hostname, port=port)


class NbdClient:
    """One connection to one export, in the transmission phase after ``connect``.

    Command failures raise OSError with the server's errno (ENOSPC stays ENOSPC, so callers keep their
    "target full" handling); a connection that breaks raises OSError too and stays broken, because after
    a short reply nothing on the stream can be trusted to line up again.
    """

    def __init__(self, sock: socket.socket, address: NbdAddress) -> None:
        self._sock = sock
        self.address = address
        self.size = 0
        self.flags = 0
        self.min_block = 1
        self.max_request = MAX_REQUEST
        self._lock = threading.Lock()
        self._handle = 0
        self._broken: str | None = "the handshake is not done"  # None: transmission, in step
        self.structured = False  # structured replies agreed
        self._allocation_id: int | None = None  # the base:allocation context, when agreed

    # ------------------------------------------------------------ connecting

    @classmethod
    def connect(cls, target: str | os.PathLike[str] | NbdAddress, *, writable: bool = True) -> NbdClient:
        """Open the export named by an NBD URI; ``writable`` refuses a read-only export up front."""
        address = target if isinstance(target, NbdAddress) else parse_nbd_uri(target)
        try:
            if address.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(HANDSHAKE_SECONDS)
                sock.connect(address.socket_path)
            else:
                sock = socket.create_connection((address.host, address.port), timeout=HANDSHAKE_SECONDS)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise NbdError(
                f"cannot connect to the NBD server at {address.where}: {reason}; start the export "
                "(qemu-nbd --socket=PATH or --port) and run again",
                retryable=True,
            ) from None
        client = cls(sock, address)
        try:
            client._handshake()
            if writable and client.read_only:
                raise NbdError(
                    f"the NBD export {address.export!r} at {address.where} is read-only: export it "
                    "writable (qemu-nbd without --read-only) and run again"
                )
            sock.settimeout(IO_SECONDS)
        except BaseException:
            client.close()
            raise
        return client

    def _handshake(self) -> None:
        address = self.address
        try:
            magic, second = struct.unpack(">QQ", self._receive(16))
            if magic != NBDMAGIC:
                raise NbdError(f"{address.where} is not an NBD server (it did not greet with NBDMAGIC)")
            if second == OLDSTYLE_MAGIC:
                raise NbdError(
                    f"the NBD server at {address.where} speaks only the old-style handshake, which has no "
                    "export names: use a newstyle server (qemu-nbd, nbdkit)"
                )
            if second != IHAVEOPT:
                raise NbdError(f"the NBD server at {address.where} sent an unknown handshake")
            (server_flags,) = struct.unpack(">H", self._receive(2))
            client_flags = server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
            self._sock.sendall(struct.pack(">I", client_flags))
            if server_flags & FLAG_FIXED_NEWSTYLE and STRUCTURED_REPLIES:
                self.structured = self._simple_option(OPT_STRUCTURED_REPLY, b"")
                if self.structured:
                    self._ask_allocation_context()
            if not (server_flags & FLAG_FIXED_NEWSTYLE and self._go()):
                self._export_name(no_zeroes=bool(client_flags & FLAG_NO_ZEROES))
            self._broken = None
        except socket.timeout:  # noqa: UP041 (not TimeoutError before Python 3.10)
            raise NbdError(
                f"the NBD server at {address.where} did not answer the handshake within "
                f"{HANDSHAKE_SECONDS:.0f} s: is another client holding an export started without --shared?",
                retryable=True,
            ) from None
        except _Closed:
            raise NbdError(
                f"the NBD server at {address.where} closed the connection during the handshake (it refused "
                f"the export {address.export!r}, or allows no more clients: qemu-nbd --shared): check the "
                "export and run again",
                retryable=True,
            ) from None
        except OSError as exc:
            raise NbdError(
                f"the NBD handshake with {address.where} failed: {exc.strerror or exc}; run again",
                retryable=True,
            ) from None

    def _go(self) -> bool:
        """NBD_OPT_GO; False when the server does not know it (the caller then uses EXPORT_NAME)."""
        name = self.address.export.encode()
        payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self._sock.sendall(_OPTION.pack(IHAVEOPT, OPT_GO, len(payload)) + payload)
        have_export = False
        while True:
            reply, data = self._option_reply(OPT_GO)
            if reply == REP_ACK:
                if not have_export:
                    raise NbdError(
                        f"the NBD server at {self.address.where} never said how large the export is"
                    )
                return True
            if reply == REP_INFO and len(data) >= 2:
                (info,) = struct.unpack_from(">H", data)
                if info == INFO_EXPORT and len(data) >= 12:
                    self.size, self.flags = struct.unpack_from(">QH", data, 2)
                    have_export = True
                elif info == INFO_BLOCK_SIZE and len(data) >= 14:
                    minimum, _preferred, maximum = struct.unpack_from(">III", data, 2)
                    self.min_block = max(1, minimum)
                    self.max_request = max(self.min_block, min(MAX_REQUEST, maximum))
            elif reply == REP_ERR_UNSUP:
                return False
            elif reply & REP_ERROR:
                self._refused(reply, data)

    def _simple_option(self, option: int, payload: bytes) -> bool:
        """An option answered by ACK (True) or by an error (False: the server does without it)."""
        self._sock.sendall(_OPTION.pack(IHAVEOPT, option, len(payload)) + payload)
        while True:
            reply, _data = self._option_reply(option)
            if reply == REP_ACK:
                return True
            if reply & REP_ERROR:
                return False

    def _ask_allocation_context(self) -> None:
        """NBD_OPT_SET_META_CONTEXT for base:allocation: what BLOCK_STATUS reports holes and zeros in.
        Without it (an error, or no context in the answer) the client just cannot tell holes."""
        name = self.address.export.encode()
        payload = (
            struct.pack(">I", len(name))
            + name
            + struct.pack(">II", 1, len(ALLOCATION_CONTEXT))
            + ALLOCATION_CONTEXT
        )
        self._sock.sendall(_OPTION.pack(IHAVEOPT, OPT_SET_META_CONTEXT, len(payload)) + payload)
        while True:
            reply, data = self._option_reply(OPT_SET_META_CONTEXT)
            if reply == REP_META_CONTEXT and len(data) >= 4 and data[4:] == ALLOCATION_CONTEXT:
                (self._allocation_id,) = struct.unpack_from(">I", data)
            elif reply == REP_ACK or reply & REP_ERROR:
                return

    def _export_name(self, *, no_zeroes: bool) -> None:
        name = self.address.export.encode()
        self._sock.sendall(_OPTION.pack(IHAVEOPT, OPT_EXPORT_NAME, len(name)) + name)
        self.size, self.flags = struct.unpack(">QH", self._receive(10))
        if not no_zeroes:
            self._receive(124)

    def _option_reply(self, option: int) -> tuple[int, bytes]:
        magic, replied_to, reply, length = _OPTION_REPLY.unpack(self._receive(_OPTION_REPLY.size))
        if magic != OPTION_REPLY_MAGIC or replied_to != option or length > _MAX_OPTION_REPLY:
            raise NbdError(f"the NBD server at {self.address.where} sent a malformed option reply")
        return reply, self._receive(length) if length else b""

    def _refused(self, reply: int, data: bytes) -> None:
        text = data.decode("utf-8", "replace").strip()
        template = _REFUSALS.get(reply)
        if template is None:
            detail = f"error {reply - REP_ERROR}" + (f": {text}" if text else "")
            message = f"refused the export {self.address.export!r} ({detail}): check the export and run again"
        else:
            message = template.format(name=self.address.export, text=f" ({text})" if text else "")
        with contextlib.suppress(OSError):
            self._sock.sendall(_OPTION.pack(IHAVEOPT, OPT_ABORT, 0))
        raise NbdError(f"the NBD server at {self.address.where} {message}")

    # ------------------------------------------------------------ what the export offers

    @property
    def read_only(self) -> bool:
        return bool(self.flags & HAS_FLAGS and self.flags & READ_ONLY)

    @property
    def can_flush(self) -> bool:
        return bool(self.flags & HAS_FLAGS and self.flags & SEND_FLUSH)

    @property
    def can_trim(self) -> bool:
        return bool(self.flags & HAS_FLAGS and self.flags & SEND_TRIM)

    @property
    def can_write_zeroes(self) -> bool:
        return bool(self.flags & HAS_FLAGS and self.flags & SEND_WRITE_ZEROES)

    @property
    def can_block_status(self) -> bool:
        return self._allocation_id is not None

    # ------------------------------------------------------------ commands

    def pread_into(self, buffer: bytearray | memoryview, offset: int) -> None:
        """Fill ``buffer`` from ``offset`` (the whole of it: an export has no short reads)."""
        view = memoryview(buffer).cast("B")
        self._check_range(offset, len(view))
        for start in range(0, len(view), self.max_request):
            piece = view[start : start + self.max_request]
            self._command(CMD_READ, offset + start, len(piece), into=piece)

    def pread(self, length: int, offset: int) -> bytes:
        buffer = bytearray(length)
        self.pread_into(buffer, offset)
        return bytes(buffer)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int, *, fua: bool = False) -> None:
        """Write all of ``data``; returns once the server has done so (durable only after ``flush``)."""
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        flags = CMD_FLAG_FUA if fua and self.flags & SEND_FUA else 0
        for start in range(0, len(view), self.max_request):
            piece = view[start : start + self.max_request]
            self._command(CMD_WRITE, offset + start, len(piece), flags=flags, payload=piece)

    def flush(self) -> None:
        """Make every completed write durable. A server that offers no FLUSH has no cache to empty."""
        if self.can_flush:
            self._command(CMD_FLUSH, 0, 0)

    def trim(self, offset: int, length: int) -> None:
        """Hint that a range is unused; what it reads afterwards is unspecified (use write_zeroes)."""
        if not self.can_trim:
            raise OSError(errno.EOPNOTSUPP, f"the NBD export at {self.address.where} does not offer TRIM")
        self._ranged(CMD_TRIM, offset, length, 0)

    def write_zeroes(self, offset: int, length: int, *, may_punch: bool = True) -> None:
        """Make a range read as zeros without sending them; ``may_punch`` lets the server leave a hole
        (NBD_CMD_FLAG_NO_HOLE unset), which keeps a thin volume thin."""
        if not self.can_write_zeroes:
            raise OSError(
                errno.EOPNOTSUPP, f"the NBD export at {self.address.where} does not offer WRITE_ZEROES"
            )
        self._ranged(CMD_WRITE_ZEROES, offset, length, 0 if may_punch else CMD_FLAG_NO_HOLE)

    def extents(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(offset, length, state) runs covering [offset, offset+length) in order, from BLOCK_STATUS;
        ``state & STATE_ZERO`` means the run reads as zeros. Needs ``can_block_status``."""
        if self._allocation_id is None:
            raise OSError(errno.EOPNOTSUPP, f"the NBD export at {self.address.where} reports no block status")
        self._check_range(offset, length)
        end = offset + length
        while offset < end:
            found: list[tuple[int, int]] = []
            self._command(CMD_BLOCK_STATUS, offset, min(end - offset, MAX_STATUS_REQUEST), extents=found)
            if not found:
                raise OSError(
                    errno.EPROTO, f"the NBD server at {self.address.where} answered no block status"
                )
            for run, state in found:
                if run == 0:
                    raise OSError(
                        errno.EPROTO, f"the NBD server at {self.address.where} sent an empty extent"
                    )
                run = min(run, end - offset)  # the last extent may reach past the request
                yield offset, run, state
                offset += run
                if offset >= end:
                    break

    def reads_zero(self, offset: int, length: int) -> bool:
        """True when the server vouches that the whole range reads as zeros (a hole, a zero cluster)."""
        return all(state & STATE_ZERO for _at, _run, state in self.extents(offset, length))

    def close(self) -> None:
        """NBD_CMD_DISC, then close the socket. DISC makes nothing durable (qemu-nbd does not flush on
        it): ``flush`` does."""
        with self._lock:
            if self._sock.fileno() < 0:
                return
            if self._broken is None:
                with contextlib.suppress(OSError):
                    self._sock.sendall(_REQUEST.pack(REQUEST_MAGIC, 0, CMD_DISC, self._next_handle(), 0, 0))
            self._broken = "closed"
            self._sock.close()

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ transmission

    def _ranged(self, command: int, offset: int, length: int, flags: int) -> None:
        self._check_range(offset, length)
        step = self.max_request
        for start in range(0, length, step):
            self._command(command, offset + start, min(step, length - start), flags=flags)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise OSError(
                errno.EINVAL,
                f"range {offset}+{length} lies beyond the end of the NBD export ({self.size} bytes)",
            )

    def _next_handle(self) -> int:
        self._handle = (self._handle + 1) & 0xFFFFFFFFFFFFFFFF
        return self._handle

    def _command(
        self,
        command: int,
        offset: int,
        length: int,
        *,
        flags: int = 0,
        payload: memoryview | None = None,
        into: memoryview | None = None,
        extents: list[tuple[int, int]] | None = None,
    ) -> None:
        with self._lock:
            if self._broken is not None:
                raise OSError(
                    errno.ESHUTDOWN,
                    f"the connection to the NBD server at {self.address.where} is unusable ({self._broken})",
                )
            handle = self._next_handle()
            header = _REQUEST.pack(REQUEST_MAGIC, flags, command, handle, offset, length)
            try:
                self._send(header, payload)
                self._replies(handle, offset, into, extents)
            except ServerRefused:
                raise  # the connection is fine: only this request failed
            except _Closed:
                self._broken = "the server closed it in the middle of a reply"
                raise OSError(
                    errno.ECONNRESET,
                    f"the NBD server at {self.address.where} closed the connection in the middle of a reply "
                    "(short reply): is the server still running?",
                ) from None
            except _Broken as exc:
                self._broken = str(exc)
                raise OSError(errno.EPROTO, str(exc)) from None
            except socket.timeout:  # noqa: UP041 (not TimeoutError before Python 3.10)
                self._broken = "a request timed out"
                raise OSError(
                    errno.ETIMEDOUT,
                    f"the NBD server at {self.address.where} did not answer within {IO_SECONDS:.0f} s",
                ) from None
            except OSError as exc:
                self._broken = exc.strerror or str(exc)
                raise OSError(
                    exc.errno or errno.EIO,
                    f"the connection to the NBD server at {self.address.where} failed: "
                    f"{exc.strerror or exc} (is the server still running?)",
                ) from None
            except BaseException:
                self._broken = "a request was interrupted"  # its reply may still be on the way
                raise

    def _replies(
        self, handle: int, offset: int, into: memoryview | None, extents: list[tuple[int, int]] | None
    ) -> None:
        """Read the whole answer to one request: a simple reply, or structured chunks up to DONE.
        Errors are raised only once the answer is consumed, so the connection stays in step."""
        where = self.address.where
        error, message, covered = 0, "", 0
        while True:
            (magic,) = struct.unpack(">I", self._receive(4))
            if magic == SIMPLE_REPLY_MAGIC:
                error, replied = _SIMPLE_REST.unpack(self._receive(_SIMPLE_REST.size))
                if replied != handle:
                    raise _Broken(f"the NBD server at {where} sent a reply to another request")
                if not error and into is not None:
                    if self.structured:
                        raise _Broken(f"the NBD server at {where} sent READ data in a simple reply")
                    self._receive_into(into)
                    covered = len(into)
                break
            if magic != STRUCTURED_REPLY_MAGIC or not self.structured:
                raise _Broken(f"the NBD server at {where} sent a damaged reply")
            flags, kind, replied, length = _CHUNK_REST.unpack(self._receive(_CHUNK_REST.size))
            if replied != handle or length > MAX_REQUEST + 64:
                raise _Broken(f"the NBD server at {where} sent a reply chunk that fits no request")
            if kind == REPLY_TYPE_OFFSET_DATA and into is not None and length >= 8:
                (at,) = struct.unpack(">Q", self._receive(8))
                self._receive_into(self._slice(into, at - offset, length - 8))
                covered += length - 8
            elif kind == REPLY_TYPE_OFFSET_HOLE and into is not None and length == 12:
                at, run = struct.unpack(">QI", self._receive(12))
                hole = self._slice(into, at - offset, run)  # checked before anything is allocated
                hole[:] = bytes(run)
                covered += run
            elif kind == REPLY_TYPE_BLOCK_STATUS and extents is not None and length >= 4 and length % 8 == 4:
                data = self._receive(length)
                if struct.unpack_from(">I", data)[0] == self._allocation_id:
                    extents.extend(struct.iter_unpack(">II", data[4:]))
            elif kind & REPLY_TYPE_ERROR_BIT and length >= 6:
                data = self._receive(length)
                code, size = struct.unpack_from(">IH", data)
                error = error or code or errno.EIO
                message = message or data[6 : 6 + size].decode("utf-8", "replace")
            elif length:
                self._receive(length)  # a chunk type this client does not use
            if flags & REPLY_FLAG_DONE:
                break
        if error:
            detail = f": {message}" if message else ""
            raise ServerRefused(
                error, f"{os.strerror(error)} (the NBD server at {where} refused the request{detail})"
            )
        if into is not None and covered != len(into):
            raise _Broken(f"the NBD server at {where} answered a READ without all of its data")

    def _slice(self, into: memoryview, start: int, length: int) -> memoryview:
        if start < 0 or start + length > len(into):
            raise _Broken(f"the NBD server at {self.address.where} sent data outside the range read")
        return into[start : start + length]

    def _send(self, header: bytes, payload: memoryview | None) -> None:
        if payload is None or not len(payload):
            self._sock.sendall(header)
            return
        sent = self._sock.sendmsg([header, payload])  # one syscall for header and chunk in the common case
        if sent < len(header):
            self._sock.sendall(header[sent:])
            sent = len(header)
        if sent - len(header) < len(payload):
            self._sock.sendall(payload[sent - len(header) :])

    def _receive(self, length: int) -> bytes:
        buffer = bytearray(length)
        self._receive_into(memoryview(buffer))
        return bytes(buffer)

    def _receive_into(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            got = self._sock.recv_into(view[done:])
            if got == 0:
                raise _Closed()
            done += got


class ServerRefused(OSError):
    """The server answered one request with an error (its errno); the connection stays usable."""


class _Closed(Exception):
    """The server closed the stream where bytes were due."""


class _Broken(Exception):
    """The stream no longer lines up with the requests sent."""
