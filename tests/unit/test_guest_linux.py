"""Linux staging on real disk images with real e2fsprogs: partition tables, debugfs edits, e2fsck checks."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from orchestrator.guest.disk_layout import filesystems_of, probe_filesystem, read_layout
from orchestrator.guest.extfs import ExtFs, GuestFsError, check_clean
from orchestrator.guest.linux import (
    GuestEdit,
    NicPlan,
    apply_edits,
    disk_layout,
    find_linux_root,
    link_rules,
    merge_hosts,
    os_release,
    parse_interfaces,
    parse_link_file,
    plan_network_edits,
    read_file,
    write_file,
)
from orchestrator.quickstart import (
    EFI_SYSTEM,
    LINUX_FILESYSTEM,
    GptPartition,
    LinuxIdentity,
    MbrPartition,
    MiB,
    Symlink,
    build_app01,
    linux_tree,
    make_ext4,
    write_gpt,
    write_mbr,
)

pytestmark = pytest.mark.skipif(
    shutil.which("debugfs") is None and not Path("/usr/sbin/debugfs").exists(),
    reason="e2fsprogs (debugfs) is not installed",
)


@pytest.fixture(scope="module")
def app01_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "app01.raw"
    build_app01(path)
    return path


@pytest.fixture
def disk(app01_image: Path, tmp_path: Path) -> Path:
    """A private copy each test may change."""
    copy = tmp_path / "replica.raw"
    subprocess.run(["cp", "--sparse=always", str(app01_image), str(copy)], check=True)
    return copy


def blank(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def partx(path: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition as util-linux sees it: an independent reader."""
    out = subprocess.run(
        ["partx", "--show", "--bytes", "--noheadings", "--output", "START,SIZE", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(int(start) * 512, int(size)) for start, size in (line.split() for line in out.splitlines())]


# ---------------------------------------------------------------- partition tables and signatures


def test_mbr_layout_matches_util_linux(disk: Path) -> None:
    layout = disk_layout(disk)
    assert layout.table == "mbr"
    assert layout.boot_signature
    assert [(p.number, p.offset, p.type, p.bootable) for p in layout.partitions] == [(1, MiB, "0x83", True)]
    if shutil.which("partx"):
        assert [(p.offset, p.size) for p in layout.partitions] == partx(disk)


def test_gpt_layout_with_efi_system_partition(tmp_path: Path) -> None:
    path = blank(tmp_path / "uefi.raw", 40 * MiB)
    write_gpt(
        path,
        [
            GptPartition(MiB, 8 * MiB, EFI_SYSTEM, "EFI"),
            GptPartition(9 * MiB, 30 * MiB, LINUX_FILESYSTEM, "root"),
        ],
        uuid.UUID(int=7),
    )
    layout = disk_layout(path)
    assert layout.table == "gpt"
    assert layout.has_efi_system_partition
    assert [(p.number, p.offset, p.size) for p in layout.partitions] == [
        (1, MiB, 8 * MiB),
        (2, 9 * MiB, 30 * MiB),
    ]
    assert layout.partitions[0].is_efi_system and not layout.partitions[1].is_efi_system
    if shutil.which("partx"):  # partx checks the header and entry CRCs, so this also proves the writer
        assert [(p.offset, p.size) for p in layout.partitions] == partx(path)


def test_extended_partition_chain_numbers_logicals_from_five(tmp_path: Path) -> None:
    path = blank(tmp_path / "logical.raw", 32 * MiB)
    write_mbr(path, [MbrPartition(MiB, 4 * MiB, 0x83), MbrPartition(8 * MiB, 20 * MiB, 0x05)], 1)
    ebr = bytearray(512)
    ebr[446:462] = (
        bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + (8192).to_bytes(4, "little")
    )
    ebr[510:512] = b"\x55\xaa"
    with open(path, "r+b") as handle:
        handle.seek(8 * MiB)
        handle.write(ebr)
    layout = disk_layout(path)
    assert [(p.number, p.offset, p.size) for p in layout.partitions] == [
        (1, MiB, 4 * MiB),
        (5, 9 * MiB, 4 * MiB),
    ]


def test_blank_and_random_disks_have_no_table(tmp_path: Path) -> None:
    path = blank(tmp_path / "blank.raw", 4 * MiB)
    layout = disk_layout(path)
    assert (layout.table, layout.partitions, layout.boot_signature) == ("none", (), False)
    assert probe_filesystem(lambda o, n: path.read_bytes()[o : o + n], 0) is None


def test_filesystem_probe_tells_ext2_from_ext4(tmp_path: Path, disk: Path) -> None:
    ext2 = blank(tmp_path / "ext2.raw", 8 * MiB)
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext2", str(ext2)],
        check=True,
        env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"},
    )
    data = ext2.read_bytes()
    assert probe_filesystem(lambda o, n: data[o : o + n], 0) == "ext2"
    raw = disk.read_bytes()

    def read(offset: int, length: int) -> bytes:
        return raw[offset : offset + length]

    assert filesystems_of(read, read_layout(read, len(raw))) == ((MiB, "ext4"),)


# ---------------------------------------------------------------- finding and reading the root


def test_find_linux_root_in_a_partition(disk: Path) -> None:
    root = find_linux_root(disk)
    assert root is not None
    assert (root.offset, root.partition, root.fstype) == (MiB, 1, "ext4")
    assert read_file(root, "/etc/hostname") == b"app01\n"
    assert os_release(root)["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"  # through the symlink


def test_find_linux_root_on_a_bare_filesystem(tmp_path: Path) -> None:
    path = blank(tmp_path / "bare.raw", 16 * MiB)
    tree = linux_tree(LinuxIdentity("bare", "52:54:00:aa:bb:cc", "10.0.0.9/24"), uuid.UUID(int=1), {})
    make_ext4(path, 0, 16 * MiB, tree, fs_uuid=uuid.UUID(int=1), label="bare")
    root = find_linux_root(path)
    assert root is not None and (root.offset, root.partition) == (0, None)
    assert read_file(root, "/etc/hostname") == b"bare\n"


def test_a_data_filesystem_is_not_a_root(tmp_path: Path) -> None:
    path = blank(tmp_path / "data.raw", 16 * MiB)
    make_ext4(path, 0, 16 * MiB, {"/pgdata/PG_VERSION": b"15\n"}, fs_uuid=uuid.UUID(int=2), label="data")
    assert find_linux_root(path) is None
    assert find_linux_root(blank(tmp_path / "empty.raw", 4 * MiB)) is None
    with pytest.raises(GuestFsError, match="does not exist"):
        find_linux_root(tmp_path / "missing.raw")


def test_read_file_follows_symlinks_and_reports_absence(tmp_path: Path) -> None:
    path = blank(tmp_path / "links.raw", 16 * MiB)
    long_dir = "d" * 90  # a target this long is a "slow" symlink stored in a data block
    make_ext4(
        path,
        0,
        16 * MiB,
        {
            "/etc/hostname": b"links\n",
            f"/usr/{long_dir}/real.conf": b"value=1\n",
            "/etc/short": Symlink("../usr/lib/conf"),
            "/usr/lib/conf": Symlink(f"/usr/{long_dir}/real.conf"),
            "/etc/loop": Symlink("loop"),
        },
        fs_uuid=uuid.UUID(int=3),
        label="links",
    )
    root = find_linux_root(path)
    assert root is not None
    assert read_file(root, "/etc/short") == b"value=1\n"
    assert read_file(root, "/etc/nothing") is None
    with pytest.raises(GuestFsError, match="directory"):
        read_file(root, "/etc")
    with pytest.raises(GuestFsError, match="symbolic links"):
        read_file(root, "/etc/loop")


# ---------------------------------------------------------------- writing


def test_write_file_creates_parents_replaces_and_checks_clean(disk: Path) -> None:
    root = find_linux_root(disk)
    assert root is not None
    write_file(root, "/etc/new/deeper/file.conf", b"a=1\n", mode=0o600)
    write_file(root, "/etc/hostname", b"renamed\n")
    assert read_file(root, "/etc/new/deeper/file.conf") == b"a=1\n"
    assert read_file(root, "/etc/hostname") == b"renamed\n"
    found = root.fs.resolve("/etc/new/deeper/file.conf")
    assert found is not None and found[1].mode == 0o600
    clean, output = check_clean(root.fs)
    assert clean, output


def test_write_through_a_symlinked_parent_lands_in_the_real_directory(tmp_path: Path) -> None:
    path = blank(tmp_path / "merged-usr.raw", 16 * MiB)
    make_ext4(
        path,
        0,
        16 * MiB,
        {"/etc/hostname": b"m\n", "/usr/lib/keep": b"k\n", "/lib": Symlink("usr/lib")},
        fs_uuid=uuid.UUID(int=4),
        label="m",
    )
    root = find_linux_root(path)
    assert root is not None
    write_file(root, "/lib/systemd/network/90-x.link", b"[Match]\n")
    assert read_file(root, "/usr/lib/systemd/network/90-x.link") == b"[Match]\n"
    assert root.fs.stat("/lib") is not None and root.fs.stat("/lib").type == "symlink"  # type: ignore[union-attr]
    assert check_clean(root.fs)[0]


def test_write_refuses_a_directory_and_odd_paths(disk: Path) -> None:
    root = find_linux_root(disk)
    assert root is not None
    with pytest.raises(GuestFsError, match="is a directory"):
        write_file(root, "/etc", b"x")
    with pytest.raises(GuestFsError, match="plain absolute path"):
        write_file(root, '/etc/bad"name', b"x")
    with pytest.raises(GuestFsError, match="is a regular"):
        write_file(root, "/etc/hostname/below", b"x")


def test_a_filesystem_copied_while_mounted_is_replayed_before_editing(disk: Path, tmp_path: Path) -> None:
    """A pending journal transaction (what a live mirror leaves) is replayed, then staging writes."""
    root = find_linux_root(disk)
    assert root is not None
    block = tmp_path / "block"
    block.write_bytes(b"J" * 4096)
    script = tmp_path / "journal.cmd"
    script.write_text(f"jo\njw -b 11000 {block}\njc\n")
    subprocess.run(
        ["debugfs", "-w", "-f", str(script), root.fs.spec],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"},
    )
    assert root.fs.needs_recovery()
    apply_edits(disk, plan_network_edits("app01", [("52:54:00:00:01:03", "dhcp", None, None)]))
    assert not root.fs.needs_recovery()
    with open(disk, "rb") as handle:
        handle.seek(MiB + 11000 * 4096)
        assert handle.read(4096) == b"J" * 4096  # the journaled block reached its home
    assert read_file(root, "/etc/systemd/network/10-hvmigrate-0.link") is not None
    assert check_clean(root.fs)[0]
    assert not list(tmp_path.glob(".*replay*")) and not list(disk.parent.glob(".*replay*"))


# ---------------------------------------------------------------- network staging


def test_plan_network_edits_contents() -> None:
    edits = plan_network_edits(
        "web01",
        [
            NicPlan("52:54:00:00:01:01", "10.1.0.11/24", "10.1.0.1", ("10.1.0.2",)),
            ("52-54-00-00-01-FF", "dhcp", None, None),
            ("52:54:00:00:01:02", "2001:db8::5/64", "2001:db8::1", []),
        ],
    )
    by_path = {e.path: e for e in edits}
    assert by_path["/etc/hostname"].content == b"web01\n"
    stanzas = {s.name: s for s in parse_interfaces(by_path["/etc/network/interfaces"].content.decode())}
    assert stanzas["nic0"].addresses == ("10.1.0.11/24",) and stanzas["nic0"].gateway == "10.1.0.1"
    assert stanzas["nic0"].hwaddress == "52:54:00:00:01:01" and stanzas["nic0"].dns == ("10.1.0.2",)
    assert stanzas["nic0"].auto and stanzas["nic1"].method == "dhcp"
    assert (stanzas["nic2"].family, stanzas["nic2"].addresses) == ("inet6", ("2001:db8::5/64",))
    link = parse_link_file("x", by_path["/etc/systemd/network/10-hvmigrate-1.link"].content.decode())
    assert (link.macs, link.name) == (("52:54:00:00:01:ff",), "nic1")
    assert by_path["/etc/hosts"].merge == "hosts"
    with pytest.raises(ValueError, match="MAC"):
        plan_network_edits("web01", [("not-a-mac", "dhcp", None, None)])
    with pytest.raises(ValueError, match="hostname"):
        plan_network_edits("web_01!", [])


def test_merge_hosts_keeps_the_guests_lines_and_drops_stale_ones() -> None:
    current = b"127.0.0.1\tlocalhost\n127.0.1.1\told\n10.0.0.11\tweb01.corp.test web01\n10.0.0.99\tbackup\n"
    managed = plan_network_edits("web01", [("52:54:00:00:01:01", "10.1.0.11/24", None, None)])[-1].content
    merged = merge_hosts(current, managed).decode().splitlines()
    assert "127.0.0.1\tlocalhost" in merged and "10.0.0.99\tbackup" in merged
    assert not any(line.startswith(("10.0.0.11", "127.0.1.1\told")) for line in merged)
    assert [line for line in merged if "hvmigrate" in line] == [
        "10.1.0.11\tweb01\t# hvmigrate",
        "127.0.1.1\tweb01\t# hvmigrate",
    ]
    assert merge_hosts(merge_hosts(current, managed), managed) == merge_hosts(current, managed)


def test_apply_network_edits_reads_back_is_idempotent_and_clean(disk: Path) -> None:
    edits = plan_network_edits("app01-new", [("52:54:00:00:01:03", "10.1.0.13/24", "10.1.0.1", ["10.1.0.2"])])
    log = apply_edits(disk, edits)
    assert any("replaced /etc/hostname" in line for line in log)
    assert any("created /etc/systemd/network/10-hvmigrate-0.link" in line for line in log)
    root = find_linux_root(disk)
    assert root is not None
    assert read_file(root, "/etc/hostname") == b"app01-new\n"
    assert [(r.macs, r.name) for r in link_rules(root)] == [(("52:54:00:00:01:03",), "nic0")]
    stanzas = parse_interfaces((read_file(root, "/etc/network/interfaces") or b"").decode())
    assert [(s.name, s.addresses) for s in stanzas if s.name != "lo"] == [("nic0", ("10.1.0.13/24",))]
    hosts = (read_file(root, "/etc/hosts") or b"").decode()
    assert "127.0.0.1\tlocalhost" in hosts and "10.1.0.13\tapp01-new" in hosts
    assert all(
        line.endswith("unchanged " + e.path) for line, e in zip(apply_edits(disk, edits), edits, strict=True)
    )
    clean, output = check_clean(root.fs)
    assert clean, output


def test_apply_edits_without_a_linux_root_fails_clearly(tmp_path: Path) -> None:
    path = blank(tmp_path / "blank.raw", 4 * MiB)
    with pytest.raises(GuestFsError, match="no Linux root"):
        apply_edits(path, [GuestEdit("/etc/hostname", b"x\n")])


def test_parse_interfaces_understands_netmask_continuations_and_hotplug() -> None:
    text = (
        "auto lo\niface lo inet loopback\n\nallow-hotplug ens3\niface ens3 inet static\n"
        "  address 192.168.1.5\n  netmask 255.255.255.0\n  hwaddress ether 52:54:00:AB:CD:EF\n"
        "  dns-nameservers 1.1.1.1 \\\n   8.8.8.8\n\niface eth9 inet manual\n"
    )
    stanzas = {s.name: s for s in parse_interfaces(text)}
    assert stanzas["ens3"].addresses == ("192.168.1.5/24",)
    assert stanzas["ens3"].hwaddress == "52:54:00:ab:cd:ef" and stanzas["ens3"].dns == ("1.1.1.1", "8.8.8.8")
    assert stanzas["ens3"].auto and not stanzas["eth9"].auto


def test_extfs_refuses_what_debugfs_cannot_open(tmp_path: Path) -> None:
    path = blank(tmp_path / "junk.raw", 4 * MiB)
    with pytest.raises(GuestFsError, match="not an ext2/3/4 filesystem"):
        ExtFs(path, 0).stat("/")
    with pytest.raises(GuestFsError, match="'\\?'"):
        ExtFs(tmp_path / "what?.raw", 0)


def test_guest_edits_round_trip_through_json_and_accept_text(disk: Path) -> None:
    edits = plan_network_edits("app01", [("52:54:00:00:01:03", "10.1.0.13/24", None, None)])
    edits.append(GuestEdit("/etc/motd", "migrated by hvmigrate\n", 0o640))  # text content is encoded
    edits.append(GuestEdit("/usr/local/bin/blob", b"\xff\xfe\x00binary", 0o755))
    journaled = json.loads(json.dumps([e.to_json() for e in edits]))
    restored = [GuestEdit.from_json(e) for e in journaled]
    assert restored == edits and restored[-2].content == b"migrated by hvmigrate\n"
    assert [e.merge for e in restored if e.path == "/etc/hosts"] == ["hosts"]
    apply_edits(disk, restored)
    root = find_linux_root(disk)
    assert root is not None and read_file(root, "/usr/local/bin/blob") == b"\xff\xfe\x00binary"
    assert b"localhost" in (read_file(root, "/etc/hosts") or b"")  # merged, not replaced


def test_concurrent_stagers_on_one_disk_do_not_corrupt_it(disk: Path) -> None:
    errors: list[BaseException] = []

    def stage(worker: int) -> None:
        try:
            for round_ in range(3):
                apply_edits(disk, [GuestEdit(f"/etc/stage{worker}/file{round_}", f"{worker}/{round_}\n")])
        except BaseException as exc:  # reported below, with the assertion that matters
            errors.append(exc)

    threads = [threading.Thread(target=stage, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    root = find_linux_root(disk)
    assert root is not None
    for worker in range(4):
        assert [read_file(root, f"/etc/stage{worker}/file{r}") for r in range(3)] == [
            f"{worker}/{r}\n".encode() for r in range(3)
        ]
    clean, output = check_clean(root.fs)
    assert clean, output


def test_symlink_removal_and_keep_edits_apply_once_and_round_trip(disk: Path, tmp_path: Path) -> None:
    edits = [
        GuestEdit("/var/lib/hvmigrate/original/etc/motd", b"original\n", 0o640, merge="keep"),
        GuestEdit("/etc/systemd/system/vmtoolsd.service", "/dev/null", kind="symlink"),
        GuestEdit("/etc/network/interfaces.d/README", kind="absent"),
        GuestEdit("/etc/not-there", kind="absent"),
    ]
    restored = [GuestEdit.from_json(e) for e in json.loads(json.dumps([e.to_json() for e in edits]))]
    assert restored == edits
    log = apply_edits(disk, restored)
    assert [line.split(": ", 1)[1] for line in log] == [
        "created /var/lib/hvmigrate/original/etc/motd (9 bytes)",
        "linked /etc/systemd/system/vmtoolsd.service -> /dev/null",
        "removed /etc/network/interfaces.d/README",
        "unchanged /etc/not-there (absent)",
    ]
    root = find_linux_root(disk)
    assert root is not None
    link = root.fs.stat("/etc/systemd/system/vmtoolsd.service")
    assert link is not None and (link.type, link.link_target) == ("symlink", "/dev/null")
    assert root.fs.stat("/etc/network/interfaces.d/README") is None
    keep = [GuestEdit("/var/lib/hvmigrate/original/etc/motd", b"second\n", merge="keep")]
    assert apply_edits(disk, keep)[0].endswith("unchanged /var/lib/hvmigrate/original/etc/motd")
    assert read_file(root, "/var/lib/hvmigrate/original/etc/motd") == b"original\n"  # never overwritten
    assert all(": unchanged " in line for line in apply_edits(disk, restored))
    local = tmp_path / "hostname.copy"
    assert root.fs.dump("/etc/hostname", local) == 6 and local.read_bytes() == b"app01\n"
    clean, output = check_clean(root.fs)
    assert clean, output


def test_two_edits_of_one_file_in_one_batch_compose(disk: Path) -> None:
    log = apply_edits(
        disk,
        [
            GuestEdit("/etc/hosts", "10.9.9.9\tfirst\t# hvmigrate\n", merge="hosts"),
            GuestEdit("/etc/hosts", "10.9.9.8\tsecond\t# hvmigrate\n", merge="hosts"),
            GuestEdit("/etc/motd", b"one\n"),
            GuestEdit("/etc/motd", b"two\n"),
        ],
    )
    assert len(log) == 4
    root = find_linux_root(disk)
    assert root is not None and read_file(root, "/etc/motd") == b"two\n"
    hosts = (read_file(root, "/etc/hosts") or b"").decode()
    assert "10.9.9.8\tsecond" in hosts and "first" not in hosts and "localhost" in hosts
