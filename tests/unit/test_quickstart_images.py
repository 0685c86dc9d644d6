"""The quickstart's generated images: deterministic, sparse, with the content the playbook relies on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.guest.linux import disk_layout, find_linux_root, os_release, parse_interfaces, read_file
from orchestrator.playbook.models import ImageSource, Playbook
from orchestrator.quickstart import IMAGES, MiB, main, make_images, sha256_of

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "quickstart.yaml"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_images(tmp_path_factory.mktemp("first"))


def test_two_generations_are_identical(generated: dict[str, Path], tmp_path: Path) -> None:
    second = make_images(tmp_path)
    assert list(second) == list(generated) == ["web01.raw", "db01.raw", "db01-data.raw", "app01.raw"]
    for name in generated:
        assert sha256_of(second[name]) == sha256_of(generated[name]), name


def test_existing_identical_images_are_kept(generated: dict[str, Path]) -> None:
    before = {name: path.stat().st_mtime_ns for name, path in generated.items()}
    lines: list[str] = []
    make_images(next(iter(generated.values())).parent, log=lines.append)
    assert {name: path.stat().st_mtime_ns for name, path in generated.items()} == before
    assert all(line.startswith("kept ") for line in lines) and len(lines) == 4
    assert not list(next(iter(generated.values())).parent.glob(".*.tmp"))


def test_a_changed_image_is_regenerated(generated: dict[str, Path], tmp_path: Path) -> None:
    copy = make_images(tmp_path)
    reference = sha256_of(copy["app01.raw"])
    with open(copy["app01.raw"], "r+b") as handle:
        handle.seek(30 * MiB)
        handle.write(b"tampered")
    lines: list[str] = []
    make_images(tmp_path, log=lines.append)
    assert sha256_of(copy["app01.raw"]) == reference
    assert any(line.startswith("created ") and "app01.raw" in line for line in lines)


def test_sizes_and_sparseness(generated: dict[str, Path]) -> None:
    sizes = {name: path.stat().st_size for name, path in generated.items()}
    assert sizes == {
        "web01.raw": 96 * MiB,
        "db01.raw": 64 * MiB,
        "db01-data.raw": 32 * MiB,
        "app01.raw": 48 * MiB,
    }
    for name, path in generated.items():
        assert path.stat().st_blocks * 512 < path.stat().st_size, f"{name} is not sparse"


def test_db01_mixes_random_text_and_zeros(generated: dict[str, Path]) -> None:
    """About 40% incompressible, 20% compressible text and the rest zeros, counted per MiB."""
    data = generated["db01.raw"].read_bytes()
    blocks = [data[i : i + MiB] for i in range(0, len(data), MiB)]
    zero = sum(1 for b in blocks if b.count(0) == len(b))
    text = sum(1 for b in blocks if b.startswith(b"00000000 INSERT INTO orders"))
    random_like = sum(1 for b in blocks if len(set(b[:4096])) > 200)
    assert (random_like, text) == (26, 13)
    assert zero >= 64 - 26 - 13 - 15  # the rest is zeros but for the 15 MiB root filesystem's metadata


def test_linux_images_carry_what_the_playbook_maps(generated: dict[str, Path]) -> None:
    expected = {
        "web01.raw": ("web01", "52:54:00:00:01:01"),
        "db01.raw": ("db01", "52:54:00:00:01:02"),
        "app01.raw": ("app01", "52:54:00:00:01:03"),
    }
    for name, (hostname, mac) in expected.items():
        layout = disk_layout(generated[name])
        assert layout.table == "mbr" and layout.boot_signature and layout.partitions[0].offset == MiB
        root = find_linux_root(generated[name])
        assert root is not None and root.fstype == "ext4"
        assert read_file(root, "/etc/hostname") == f"{hostname}\n".encode()
        assert os_release(root)["ID"] == "debian"
        stanzas = parse_interfaces((read_file(root, "/etc/network/interfaces") or b"").decode())
        assert [s.hwaddress for s in stanzas if s.hwaddress] == [mac]
        fstab = (read_file(root, "/etc/fstab") or b"").decode()
        assert "UUID=" in fstab and " / " in fstab
    web = find_linux_root(generated["web01.raw"])
    assert web is not None and b"It works" in (read_file(web, "/srv/www/index.html") or b"")
    assert len(read_file(web, "/srv/www/assets/photo.jpg") or b"") == 3 * MiB
    assert disk_layout(generated["db01-data.raw"]).table == "none"


def test_filesystems_check_clean(generated: dict[str, Path]) -> None:
    for name, offset in (("web01.raw", MiB), ("db01.raw", MiB), ("db01-data.raw", 0), ("app01.raw", MiB)):
        spec = f"{generated[name]}?offset={offset}" if offset else str(generated[name])
        result = subprocess.run(
            ["e2fsck", "-fn", spec],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_quickstart_playbook_is_valid_and_uses_these_images() -> None:
    playbook = Playbook.model_validate(yaml.safe_load(PLAYBOOK.read_text()))
    assert [s.name for s in playbook.servers] == ["db01", "web01", "app01"]
    assert playbook.server("web01").depends_on == ["db01"]
    assert playbook.defaults.cutover.mode == "manual" and playbook.defaults.mirror.bandwidth.schedule
    assert playbook.providers["local"].type == "sim" and playbook.dns["corp"].type == "zonefile"
    image_files = {spec.file for spec in IMAGES}
    for server in playbook.servers:
        assert isinstance(server.source, ImageSource)
        paths = [server.source.path, *server.source.extra_disks]
        assert all(
            not p.is_absolute() and p.parent == Path("images") for p in paths
        )  # relative to the playbook
        assert {p.name for p in paths} <= image_files
        assert [d.source for d in server.target.disks] == [p.name for p in paths]
        assert all(r.ttl == 60 and r.provider == "corp" for r in server.dns_records)
        assert all(n.ip != "keep" and n.source_mac for n in server.target.nics)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "images")]) == 0
    assert capsys.readouterr().out.count("created ") == 4
    (tmp_path / "blocked").write_text("a file where the folder should be")
    assert main([str(tmp_path / "blocked")]) == 1
    assert "error:" in capsys.readouterr().err
