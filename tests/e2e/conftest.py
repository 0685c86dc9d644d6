"""End-to-end fixtures: the real `migrate` command on a private copy of the quickstart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.quickstart import make_images

REPO = Path(__file__).resolve().parents[2]


class Migration:
    """A quickstart folder of its own and a way to run `migrate` in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.playbook = root / "quickstart.yaml"
        self.images = root / "images"
        self.sim = root / "sim-hypervisor"
        self.state = root / ".hvmigrate"

    def env(self) -> dict[str, str]:
        return {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}

    timeout = 600.0  # one `migrate` command

    def run(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        if check is not None:
            assert done.returncode == check, (
                f"migrate {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=self.root,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def edit(self, old: str, new: str) -> None:
        text = self.playbook.read_text()
        assert old in text, old
        self.playbook.write_text(text.replace(old, new))

    def disk(self, vm_disk: str) -> Path:
        return self.sim / "datastores" / "default" / f"{vm_disk}.raw"

    def wait_for_step(self, step_id: str, *, progress_at_least: int = 1, timeout: float = 60) -> None:
        """Poll the journal until a step runs and has reported some progress (as `migrate status` would)."""
        import sqlite3

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            journal = self.state / "journal.sqlite"
            if journal.exists():
                try:
                    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1)
                    row = db.execute(
                        "SELECT state, progress_done FROM steps WHERE step_id=?", (step_id,)
                    ).fetchone()
                    db.close()
                except sqlite3.Error:
                    row = None
                if row and row[0] == "running" and row[1] >= progress_at_least:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{step_id} did not start making progress within {timeout}s")


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    make_images(folder)
    return folder


@pytest.fixture
def migration(tmp_path: Path, image_cache: Path) -> Iterator[Migration]:
    shutil.copy(REPO / "playbooks" / "quickstart.yaml", tmp_path / "quickstart.yaml")
    (tmp_path / "images").mkdir()
    for image in image_cache.iterdir():
        subprocess.run(
            ["cp", "--sparse=always", str(image), str(tmp_path / "images" / image.name)], check=True
        )
    yield Migration(tmp_path)
