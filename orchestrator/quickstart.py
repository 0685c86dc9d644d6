"""The quickstart's source servers, generated as disk images: ``python -m orchestrator.quickstart DIR``.

The quickstart must run on a laptop with nothing installed but this package and e2fsprogs, yet exercise
what a real migration meets: partitioned disks with a Linux root whose network identity has to be
staged, incompressible data, compressible data and long runs of zeros. Images are built without root and
without mounting (``mke2fs -d`` fills a filesystem from a directory), and byte for byte the same on every
run: a fixed seed, fixed UUIDs, a pinned mke2fs configuration and fixed timestamps. So a re-run keeps the
existing files, and the mirror's resume and verify can be demonstrated against known hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import struct
import subprocess
import sys
import tempfile
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.guest.extfs import GuestFsError, e2fs_tool

MiB = 1024**2
SECTOR = 512
SEED = 20260105
FAKE_TIME = 1767225600  # 2026-01-01T00:00:00Z: every timestamp inside the images
PART_START = 1 * MiB  # where partitioning tools have put the first partition since 2008

# mke2fs's defaults differ between e2fsprogs releases; pinned so that the recipe, not the host, decides.
MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""

_OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""


class Symlink(str):
    """A tree entry that is a symbolic link to this target."""


Tree = Mapping[str, "bytes | Symlink"]


@dataclass(frozen=True)
class LinuxIdentity:
    hostname: str
    mac: str
    address: str  # CIDR on the source network
    gateway: str = "10.0.0.1"
    dns: str = "10.0.0.2"


LINUX_FILESYSTEM = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
EFI_SYSTEM = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")


@dataclass(frozen=True)
class GptPartition:
    offset: int
    size: int
    type: uuid.UUID = LINUX_FILESYSTEM
    name: str = ""


@dataclass(frozen=True)
class MbrPartition:
    offset: int
    size: int
    type: int = 0x83
    bootable: bool = False


# ---------------------------------------------------------------- building blocks


def write_mbr(path: Path, partitions: list[MbrPartition], disk_signature: int) -> None:
    """An MS-DOS partition table with the 0x55AA boot signature BIOS firmware looks for."""
    sector = bytearray(SECTOR)
    sector[0:46] = b"hvmigrate quickstart image: no boot loader\r\n\x00\x00"
    struct.pack_into("<IH", sector, 440, disk_signature, 0)
    for slot, part in enumerate(partitions):
        struct.pack_into(
            "<B3sB3sII",
            sector,
            446 + 16 * slot,
            0x80 if part.bootable else 0x00,
            b"\xfe\xff\xff",
            part.type,
            b"\xfe\xff\xff",
            part.offset // SECTOR,
            part.size // SECTOR,
        )
    sector[510:512] = b"\x55\xaa"
    with open(path, "r+b") as handle:
        handle.write(sector)


def write_gpt(path: Path, partitions: list[GptPartition], disk_guid: uuid.UUID) -> None:
    """A GUID partition table (UEFI layout): protective MBR, primary and backup headers, CRCs and all."""
    sectors = path.stat().st_size // SECTOR
    entries = bytearray(128 * 128)
    for index, part in enumerate(partitions):
        unique = uuid.uuid5(disk_guid, f"partition-{index + 1}")
        name = part.name.encode("utf-16-le")[:72].ljust(72, b"\x00")
        struct.pack_into(
            "<16s16sQQQ72s",
            entries,
            index * 128,
            part.type.bytes_le,
            unique.bytes_le,
            part.offset // SECTOR,
            (part.offset + part.size) // SECTOR - 1,
            0,
            name,
        )
    entries_crc = zlib.crc32(entries)

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = [
            b"EFI PART",
            0x00010000,
            92,
            0,
            0,
            current,
            backup,
            34,
            sectors - 34,
            disk_guid.bytes_le,
            entries_lba,
            128,
            128,
            entries_crc,
        ]
        raw = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", *fields))
        struct.pack_into("<I", raw, 16, zlib.crc32(raw))
        return bytes(raw).ljust(SECTOR, b"\x00")

    protective = bytearray(SECTOR)
    struct.pack_into(
        "<B3sB3sII",
        protective,
        446,
        0,
        b"\x00\x02\x00",
        0xEE,
        b"\xff\xff\xff",
        1,
        min(sectors - 1, 0xFFFFFFFF),
    )
    protective[510:512] = b"\x55\xaa"
    with open(path, "r+b") as handle:
        for lba, data in (
            (0, bytes(protective)),
            (1, header(1, sectors - 1, 2)),
            (2, bytes(entries)),
            (sectors - 33, bytes(entries)),
            (sectors - 1, header(sectors - 1, 1, sectors - 33)),
        ):
            handle.seek(lba * SECTOR)
            handle.write(data)


def make_ext4(image: Path, offset: int, size: int, tree: Tree, *, fs_uuid: uuid.UUID, label: str) -> None:
    """An ext4 filesystem holding ``tree`` at ``offset`` of ``image``, reproducible to the byte.

    mke2fs copies each source file's ctime, which no one can set, so every inode's times and owner are
    rewritten with debugfs afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="hvmigrate-quickstart-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        paths = _populate(root, tree)
        conf = Path(tmp) / "mke2fs.conf"
        conf.write_text(MKE2FS_CONF)
        env = {**os.environ, "MKE2FS_CONFIG": str(conf), "E2FSPROGS_FAKE_TIME": str(FAKE_TIME)}
        hash_seed = uuid.uuid5(fs_uuid, "hash_seed")
        spec = f"{image}?offset={offset}" if offset else str(image)
        _run(
            [
                e2fs_tool("mke2fs"),
                "-q",
                "-F",
                "-t",
                "ext4",
                "-T",
                "default",
                "-U",
                str(fs_uuid),
                "-L",
                label,
                "-E",
                f"offset={offset},hash_seed={hash_seed},nodiscard",
                "-d",
                str(root),
                str(image),
                f"{size // 1024}k",
            ],
            env,
        )
        commands = [
            f"sif {p} {what} {value}"
            for p in ["/", "/lost+found", *paths]
            for what, value in (
                ("atime", f"@{FAKE_TIME}"),
                ("mtime", f"@{FAKE_TIME}"),
                ("ctime", f"@{FAKE_TIME}"),
                ("crtime", f"@{FAKE_TIME}"),
                ("uid", "0"),
                ("gid", "0"),
            )
        ]
        script = Path(tmp) / "fix-times.cmd"
        script.write_text("\n".join(commands) + "\n")
        _run([e2fs_tool("debugfs"), "-w", "-f", str(script), spec], env)


def _populate(root: Path, tree: Tree) -> list[str]:
    """Write the tree under ``root``; returns every guest path created (directories included), sorted."""
    created: set[str] = set()
    for guest_path, content in sorted(tree.items()):
        local = root / guest_path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        parts = guest_path.strip("/").split("/")
        created.update("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
        if isinstance(content, Symlink):
            local.symlink_to(str(content))
        else:
            local.write_bytes(content)
            local.chmod(0o644)
    for directory in root.rglob("*"):
        if directory.is_dir() and not directory.is_symlink():
            directory.chmod(0o755)
    return sorted(created)


def _run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(args, capture_output=True, env=env, timeout=120, check=False)
    errors = result.stderr.decode(errors="replace")
    if result.returncode != 0 or "while trying to open" in errors:
        raise GuestFsError(f"{Path(args[0]).name} failed building a quickstart image: {errors.strip()}")


def linux_tree(identity: LinuxIdentity, root_uuid: uuid.UUID, extra: Tree) -> dict[str, bytes | Symlink]:
    """The /etc of a small Debian server whose NIC is configured the ifupdown way, by name."""
    address = identity.address
    interfaces = (
        "# This file describes the network interfaces available on your system\n"
        "# and how to activate them. For more information, see interfaces(5).\n\n"
        "source /etc/network/interfaces.d/*\n\n"
        "auto lo\niface lo inet loopback\n\n"
        "allow-hotplug eth0\n"
        "iface eth0 inet static\n"
        f"    address {address}\n"
        f"    gateway {identity.gateway}\n"
        f"    hwaddress ether {identity.mac}\n"
        f"    dns-nameservers {identity.dns}\n"
    )
    hosts = (
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{identity.hostname}\n{address.split('/')[0]}\t"
        f"{identity.hostname}.corp.test {identity.hostname}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
    tree: dict[str, bytes | Symlink] = {
        "/etc/hostname": f"{identity.hostname}\n".encode(),
        "/etc/hosts": hosts.encode(),
        "/etc/fstab": f"# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"UUID={root_uuid} /  ext4  errors=remount-ro  0  1\n".encode(),
        "/etc/debian_version": b"12.8\n",
        "/usr/lib/os-release": _OS_RELEASE.encode(),
        "/etc/os-release": Symlink("../usr/lib/os-release"),
        "/etc/network/interfaces": interfaces.encode(),
        "/etc/network/interfaces.d/README": b"# drop-in interface definitions\n",
        "/etc/resolv.conf": f"nameserver {identity.dns}\nsearch corp.test\n".encode(),
    }
    tree.update(extra)
    return tree


def repeated_text(line: str, size: int) -> bytes:
    """Log-like data: compresses well but is not zero, as most of a real server's used blocks are."""
    out = bytearray()
    number = 0
    while len(out) < size:
        out += f"{number:08d} {line}\n".encode()
        number += 1
    return bytes(out[:size])


# ---------------------------------------------------------------- the quickstart's servers


def _linux_disk(
    path: Path, size: int, root_size: int | None, identity: LinuxIdentity, extra: Tree, name_seed: str
) -> None:
    root_uuid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{name_seed}.root.quickstart.hvmigrate")
    root_size = root_size or size - PART_START
    _truncate(path, size)
    make_ext4(
        path, PART_START, root_size, linux_tree(identity, root_uuid, extra), fs_uuid=root_uuid, label="root"
    )
    partitions = [MbrPartition(PART_START, root_size, 0x83, bootable=True)]
    if PART_START + root_size < size:
        partitions.append(MbrPartition(PART_START + root_size, size - PART_START - root_size, 0x83))
    write_mbr(path, partitions, _signature(name_seed))


def build_web01(path: Path) -> None:
    rng = random.Random(f"{SEED}/web01")
    pages = {
        f"/srv/www/page{i:02d}.html": (
            f"<!doctype html><title>web01 page {i}</title>\n" + "<p>Lorem ipsum dolor sit amet.</p>\n" * 200
        ).encode()
        for i in range(20)
    }
    _linux_disk(
        path,
        96 * MiB,
        None,
        LinuxIdentity("web01", "52:54:00:00:01:01", "10.0.0.11/24"),
        {
            "/srv/www/index.html": b"<!doctype html><title>web01</title><h1>It works, and it moved.</h1>\n",
            **pages,
            "/srv/www/assets/photo.jpg": rng.randbytes(3 * MiB),  # stands for already-compressed media
            "/srv/www/assets/app.js": repeated_text("function render(){return document.body.innerHTML}", MiB),
            "/var/log/nginx/access.log": repeated_text(
                '10.0.0.5 - - "GET /index.html HTTP/1.1" 200 512', 4 * MiB
            ),
        },
        "web01",
    )


def build_app01(path: Path) -> None:
    rng = random.Random(f"{SEED}/app01")
    _linux_disk(
        path,
        48 * MiB,
        None,
        LinuxIdentity("app01", "52:54:00:00:01:03", "10.0.0.13/24"),
        {
            "/opt/app/app.py": b"import os\nprint('app01 uses', os.environ.get('DB', 'db01.corp.test'))\n",
            "/opt/app/config.yaml": b"database: db01.corp.test\nlisten: 0.0.0.0:8080\n",
            "/opt/app/model.bin": rng.randbytes(2 * MiB),
            "/var/log/app/app.log": repeated_text("INFO request served in 3ms", 2 * MiB),
        },
        "app01",
    )


def build_db01(path: Path) -> None:
    """A 16 MiB Linux root, then a raw database area: 40% random, 20% text, the rest zeros (sparse)."""
    size = 64 * MiB
    _linux_disk(
        path,
        size,
        15 * MiB,
        LinuxIdentity("db01", "52:54:00:00:01:02", "10.0.0.12/24"),
        {
            "/etc/db/db.conf": b"data_area = /dev/sda2\nlisten = 0.0.0.0:5432\n",
        },
        "db01",
    )
    rng = random.Random(f"{SEED}/db01")
    slots = list(range(16, 64))  # 1 MiB slots of the data partition
    rng.shuffle(slots)
    random_slots, text_slots = slots[:26], slots[26:39]  # 26 MiB ~ 40%, 13 MiB ~ 20% of 64 MiB
    text = repeated_text("INSERT INTO orders VALUES (42, 'widget', 19.99);", MiB)
    with open(path, "r+b") as handle:
        for slot in sorted(random_slots + text_slots):
            handle.seek(slot * MiB)
            handle.write(rng.randbytes(MiB) if slot in random_slots else text)


def build_db01_data(path: Path) -> None:
    """A second disk with a filesystem on the whole device and no partition table, as data disks often are."""
    rng = random.Random(f"{SEED}/db01-data")
    _truncate(path, 32 * MiB)
    fs_uuid = uuid.uuid5(uuid.NAMESPACE_DNS, "db01-data.quickstart.hvmigrate")
    make_ext4(
        path,
        0,
        32 * MiB,
        {
            "/PG_VERSION": b"15\n",
            "/base/16384/16385": rng.randbytes(4 * MiB),
            "/base/16384/16390": repeated_text("(42,widget,19.99,2026-01-05)", 4 * MiB),
            "/pg_wal/000000010000000000000001": repeated_text("wal record", 2 * MiB),
        },
        fs_uuid=fs_uuid,
        label="pgdata",
    )


@dataclass(frozen=True)
class ImageSpec:
    file: str
    build: Callable[[Path], None]
    description: str = field(default="", compare=False)


IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec("web01.raw", build_web01, "96 MiB, MBR, ext4 root with a web site"),
    ImageSpec("db01.raw", build_db01, "64 MiB, MBR, ext4 root and a raw data area"),
    ImageSpec("db01-data.raw", build_db01_data, "32 MiB, ext4 on the whole disk"),
    ImageSpec("app01.raw", build_app01, "48 MiB, MBR, ext4 root with an application"),
)


def make_images(directory: Path, *, log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Generate every quickstart image in ``directory``; an existing identical image is left untouched."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    for spec in IMAGES:
        target = directory / spec.file
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.file}.", suffix=".tmp", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            tmp.unlink()
            spec.build(tmp)
            if target.exists() and sha256_of(target) == sha256_of(tmp):
                status = "kept"
                tmp.unlink()
            else:
                status = "created"
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        if log:
            log(f"{status} {target} ({spec.description})")
        made[spec.file] = target
    return made


def sha256_of(path: Path) -> str:
    """Hash of a (sparse) image; holes are hashed as the zeros they read as."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def _truncate(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


def _signature(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{SEED}/{name}".encode()).digest()[:4], "little")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.quickstart", description="Generate the quickstart's source disk images."
    )
    parser.add_argument("directory", type=Path, help="where to write the images (e.g. playbooks/images)")
    args = parser.parse_args(argv)
    try:
        make_images(args.directory, log=print)
    except (GuestFsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
