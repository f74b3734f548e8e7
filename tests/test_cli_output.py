"""What `imagegen` prints: tab-separated lines through a pipe, whole ids and statuses in Rich
tables at 80 columns, user text escaped, and a demo whose images a newcomer can open."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from imagegen.models import JobStatus
from imagegen.worker.cli.views import printable
from tests.conftest import Stack, add_jobs, unique
from tests.test_cli import imagegen

pytestmark = pytest.mark.timeout(90)
RICH_STYLE = re.compile(r"\x1b\[[0-9;]*m")
HOSTILE = "\x1b]0;pwned\x07\x1b[2Jwiped \x9b31mred \u202eevil\tx\ny"


def on_a_terminal(stack: Stack, *args: str, columns: int = 80) -> str:
    """The command with its stdout on a pseudo-terminal this many columns wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, **stack.env, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegen.worker.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(30) == 0
    return RICH_STYLE.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


def tsv(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines()]


@pytest.mark.slow
def test_pipes_get_tab_separated_lines_and_terminals_whole_ids(running: Stack) -> None:
    job_id = running.enqueue(unique("a lighthouse at dawn"), num_images=2)
    shown = running.wait_terminal(job_id)
    # the CLI shows the stored copies, on this machine's disk
    keys = [image["storage_key"] for image in shown["images"]]

    listing = tsv(imagegen(running, "jobs").stdout)
    assert listing[0] == ["id", "created", "status", "attempts", "prompt", "outcome"]
    assert listing[1][0] == str(job_id) and listing[1][2] == "succeeded"
    assert all(len(row) == 6 for row in listing)

    one = imagegen(running, "job", str(job_id)).stdout
    facts = tsv(one.split("\n\n")[0])
    assert facts[0] == ["field", "value"]
    shown_urls = [value for key, value in facts if key == "image"]
    assert len(shown_urls) == len(keys) == 2
    for url, key in zip(shown_urls, keys, strict=True):
        assert url.startswith("file:///") and url.endswith(key), (url, key)
    assert "…" not in one

    table = on_a_terminal(running, "jobs")
    view = on_a_terminal(running, "job", str(job_id))
    for text in (table, view):  # image URLs stay whole, on lines of their own (to open them)
        assert max(len(line) for line in text.splitlines() if not line.startswith("image ")) <= 80
        assert "…" not in text
    assert any(str(job_id) in line and "succeeded" in line for line in table.splitlines())
    assert any(line.split() == ["id", str(job_id)] for line in view.splitlines())
    assert any(line.split() == ["status", "succeeded"] for line in view.splitlines())
    assert all(any(line.endswith(key) for line in view.splitlines()) for key in keys)


@pytest.mark.slow
def test_control_characters_in_a_prompt_never_reach_the_terminal(stack: Stack) -> None:
    (job_id,) = add_jobs(stack.database_url, 1, JobStatus.QUEUED, prompt=HOSTILE)
    for text in (
        imagegen(stack, "jobs").stdout,
        imagegen(stack, "job", str(job_id)).stdout,
        on_a_terminal(stack, "jobs", columns=200),
        on_a_terminal(stack, "job", str(job_id), columns=200),
    ):
        assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
        assert "\x07" not in text
        assert "\\x1b]0;pwned\\x07\\x1b[2Jwiped \\x9b31mred \\u202eevil" in text
    row = tsv(imagegen(stack, "jobs").stdout)[1]
    assert (
        len(row) == 6
        and row[4] == "\\x1b]0;pwned\\x07\\x1b[2Jwiped \\x9b31mred \\u202eevil\\tx\\ny"
    )
    assert json.loads(imagegen(stack, "job", str(job_id), "--json").stdout)["prompt"] == HOSTILE


def test_printable_escapes_controls_and_keeps_text() -> None:
    assert printable("café 🦊 👩‍👩‍👧 日本") == "café 🦊 👩‍👩‍👧 日本"
    assert printable("a\x1b[31mb\x00\x7f\u2066") == "a\\x1b[31mb\\x00\\x7f\\u2066"
    assert printable("caf\udce9") == "caf\\udce9"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_demo_runs_on_embedded_defaults_and_saves_its_images(tmp_path: Path) -> None:
    """The README's first command, through a pipe: SQLite, embedded broker, emulator, a
    real worker; the table as tab-separated lines, the images in a local folder."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAL_", "SSL_CERT", "DATABASE_URL", "REDIS_URL", "IMAGEGEN_"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "imagegen.worker.cli", "demo", "--emulator"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=220,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = tsv(done.stdout)
    assert rows[0] == [
        "prompt",
        "emulated fal",
        "status",
        "category",
        "attempts",
        "message / error",
    ]
    statuses = {row[2] for row in rows[1:]}
    assert statuses == {"succeeded", "refused", "failed"}, rows
    assert "celebrity_likeness" in {row[3] for row in rows[1:]}
    assert "still running" not in done.stderr and "Traceback" not in done.stderr
    images = sorted((tmp_path / "imagegen-demo-images").glob("*.png"))
    assert len(images) >= 8, done.stderr
    assert all(path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for path in images)
    assert str(images[0].parent) in done.stderr
