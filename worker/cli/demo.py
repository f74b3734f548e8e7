"""``imagegen demo``: a batch of prompts through the whole pipeline on embedded defaults.

With no services and no FAL_KEY (or with ``--emulator``): the job table in a SQLite file
(migrated), the fal emulator on a free port, and a real Celery worker (a subprocess) on an
embedded broker, a SQLite file. With REDIS_URL / DATABASE_URL set it uses those instead;
with FAL_KEY set (or ``--real-fal``) it calls fal.ai after asking (or with ``--yes``).
The outcome table goes to stdout (tab-separated lines through a pipe), the images to a
local folder, and what is happening to stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text
from sqlalchemy import select

from imagegen.models import TERMINAL_STATUSES, Job
from imagegen.worker.cli.views import STATUS_STYLE, printable, write_tsv
from imagegen.worker.errors import ConfigurationError, ImagegenError

#: (prompt, what the emulator is steered to do). The directive is stripped for display.
DEMO_BATCH: list[tuple[str, dict[str, Any]]] = [
    ("a lighthouse on a cliff at dawn, oil painting", {}),
    ("a red fox curled up in fresh snow", {"size": "square_hd"}),
    ("an isometric cutaway of a tiny bakery", {"quality": "medium"}),
    ("a watercolour map of an imaginary archipelago", {"size": "1536x1024"}),
    ("a kid's birthday party in a sunny garden", {"num_images": 2}),
    ("a cartoon mouse reading a book by candlelight", {"quality": "low"}),
    ("a brutalist library in the rain", {"size": "portrait_16_9"}),
    ("[[fal:refuse:celebrity_likeness]] a photo of a famous pop star at the beach", {}),
    ("[[fal:refuse:sexual_minors]] (a prompt fal refuses outright)", {}),
    ("[[fal:refuse422:violence_named_individual]] a named politician being attacked", {}),
    ("[[fal:late-refuse:trademark_ip]] a famous cartoon mouse mascot on a cereal box", {}),
    ("[[fal:status-refuse:hate_protected_group]] a poster mocking a religion", {}),
    ("[[fal:refuse:self_harm_instructions]] step-by-step self-harm guide", {}),
    ("[[fal:429:1,ok]] a hot-air balloon over vineyards (rate-limited once)", {}),
    ("[[fal:503json,ok]] a snail racing a tortoise (no runner, then fine)", {}),
    ("[[fal:drop,ok]] a lantern festival on a river (connection dropped once)", {}),
    ("[[fal:runner-disconnected,ok]] a paper boat in a gutter (runner lost once)", {}),
    ("[[fal:502]] a clockwork owl (fal's gateway keeps failing)", {}),
    ("[[fal:malformed]] a glass greenhouse (fal answers garbage)", {}),
    ("[[fal:no-images]] a desert at noon (fal returns no images)", {}),
]
REAL_BATCH: list[tuple[str, dict[str, Any]]] = [
    ("a lighthouse on a cliff at dawn, oil painting", {"quality": "low"}),
    ("a red fox curled up in fresh snow", {"quality": "low", "size": "square"}),
]
DEMO_ENV = {
    "IMAGEGEN_BACKOFF_BASE_S": "0.3",
    "IMAGEGEN_BACKOFF_CAP_S": "2",
    "IMAGEGEN_POLL_INITIAL_S": "0.3",
    "IMAGEGEN_POLL_MAX_S": "1",
    "IMAGEGEN_SUBMIT_TIMEOUT_S": "5",
}
#: With no REDIS_URL the demo's broker is a SQLite file (kombu's SQLAlchemy transport).
EMBEDDED_BROKER = "sqla+sqlite:///imagegen-broker.db"
_DIRECTIVE = re.compile(r"\[\[fal:([^\]]*)\]\]\s*")
#: Where the demo saves the images it generated (relative to the current directory).
IMAGES_DIR = Path("imagegen-demo-images")


def run_demo(
    *,
    real_fal: bool,
    assume_yes: bool,
    out: Console,
    err: Console,
    plain: bool,
    images_dir: Path = IMAGES_DIR,
) -> None:
    """The batch, end to end: the outcome table on ``out`` (``plain``: tab-separated
    lines), the images in ``images_dir``, progress and where things are on ``err``."""
    emulator = None
    if real_fal:
        _confirm_spending(assume_yes)
        batch = REAL_BATCH
    else:
        emulator = _start_emulator(err)
        batch = DEMO_BATCH
        # the emulator cannot take fal-client's CDN upload: input images go inline
        os.environ.setdefault("IMAGEGEN_INPUT_IMAGES_VIA", "data_uri")
    for name, value in DEMO_ENV.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("REDIS_URL", EMBEDDED_BROKER)
    from imagegen.worker.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    try:
        _run(settings, batch, _Output(out, err, plain, images_dir))
    finally:
        if emulator is not None:
            emulator.stop()


def _confirm_spending(assume_yes: bool) -> None:
    if not os.environ.get("FAL_KEY"):
        raise ConfigurationError("--real-fal needs FAL_KEY in the environment")
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise ConfigurationError("--real-fal spends money on fal.ai: add --yes to confirm")
    typer.confirm(f"Generate {len(REAL_BATCH)} images on fal.ai (billed)?", abort=True)


def _start_emulator(console: Console) -> Any:
    if "fal_client" in sys.modules:
        raise ConfigurationError("fal_client was imported before the demo could point it")
    from imagegen.worker.fal.emulator import FalEmulator

    emulator = FalEmulator(latency_s=1.0).start()
    os.environ.update(emulator.env())
    console.print(
        f"fal emulator on https://{emulator.host_port} (self-signed CA {emulator.ca_file})",
        soft_wrap=True,
    )
    return emulator


class _Output:
    """Where the demo writes: the table, the messages, and the images."""

    def __init__(self, out: Console, err: Console, plain: bool, images_dir: Path) -> None:
        self.out, self.err, self.plain, self.images_dir = out, err, plain, images_dir


def _run(settings: Any, batch: list[tuple[str, dict[str, Any]]], output: _Output) -> None:
    from imagegen.worker.celery_app import app
    from imagegen.worker.db import upgrade
    from imagegen.worker.jobs.enqueue import enqueue
    from imagegen.worker.logs import configure

    configure(settings.log_format, level=40)
    upgrade(settings.database_url)
    processes = [_start(settings, "worker"), _start(settings, "poller")]
    try:
        ids = [enqueue(prompt, settings=settings, app=app, **opts) for prompt, opts in batch]
        finished = _wait(settings, ids, output.err)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(15)
    jobs = _jobs(settings, ids)
    _show_outcomes(output, jobs)
    where = _absolute_sqlite(settings.database_url)
    output.err.print(f"job table: {where}  (try `imagegen stats`, `imagegen jobs`)", soft_wrap=True)
    from imagegen.worker.cli.demo_images import save_images

    save_images(jobs, output.images_dir, output.err)
    if not finished:
        raise ImagegenError(
            "the demo timed out; see /tmp/imagegen-demo-worker.log and imagegen-demo-poller.log"
        )


def _start(settings: Any, role: str) -> subprocess.Popen[bytes]:
    """A real Celery worker (``celery -A worker worker``) or the poller (``imagegen poller``)
    on this run's broker and database."""
    log = Path(tempfile.gettempdir()) / f"imagegen-demo-{role}.log"
    from imagegen.worker.celery_app import worker_argv

    cmd = worker_argv(concurrency=16) if role == "worker" else poller_argv()
    env = {
        **os.environ,
        "REDIS_URL": _absolute_sqlite(settings.redis_url),
        "DATABASE_URL": _absolute_sqlite(settings.database_url),
        "IMAGEGEN_STORAGE_URL": _absolute_storage(settings.storage_url),
    }
    # Run from the project root: a stray ``worker/`` folder in the cwd would shadow the package.
    root = Path(__file__).resolve().parent.parent
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)


def poller_argv() -> list[str]:
    """The documented way to start the poller (``imagegen poller``), as an argv."""
    return [sys.executable, "-m", "imagegen.worker.cli", "poller"]


def _absolute_sqlite(url: str) -> str:
    """``sqlite:///x.db`` relative to this cwd, made absolute for a process with another cwd."""
    prefix, sep, path = url.partition(":///")
    if not sep or "sqlite" not in prefix or path.startswith("/"):
        return url
    return f"{prefix}:///{Path(path).resolve()}"


def _absolute_storage(url: str) -> str:
    """A relative ``file:`` storage of this cwd, made absolute likewise (the CLI and the
    worker must see the same directory)."""
    path = url.removeprefix("file:") if "://" not in url else None
    if path is None or path.startswith("/"):
        return url
    return f"file:{Path(path).resolve()}"


def _wait(settings: Any, ids: list[uuid.UUID], console: Console, timeout_s: float = 180) -> bool:
    from imagegen.worker.db import session_scope

    deadline = time.monotonic() + timeout_s
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=len(ids))
        while time.monotonic() < deadline:
            with session_scope(settings.database_url) as session:
                statuses = session.execute(select(Job.status).where(Job.id.in_(ids))).scalars()
                done = sum(1 for s in statuses if s in TERMINAL_STATUSES)
            progress.update(task, completed=done)
            if done == len(ids):
                return True
            time.sleep(0.2)
    console.print("[yellow]some jobs are still running; the table shows where they are[/yellow]")
    return False


def _jobs(settings: Any, ids: list[uuid.UUID]) -> list[Job]:
    from imagegen.worker.db import session_scope

    with session_scope(settings.database_url) as session:
        jobs = {j.id: j for j in session.execute(select(Job).where(Job.id.in_(ids))).scalars()}
    return [jobs[job_id] for job_id in ids]


_HEADER = ("prompt", "emulated fal", "status", "category", "attempts", "message / error")


def _show_outcomes(output: _Output, jobs: list[Job]) -> None:
    rows = []
    for job in jobs:
        match = _DIRECTIVE.search(job.prompt)
        rows.append(
            (
                _DIRECTIVE.sub("", job.prompt),
                match[1] if match else "ok",
                job.status.value,
                job.refusal_category or "",
                str(job.attempts),
                job.refusal_message or job.error or f"{len(job.images or [])} image(s)",
            )
        )
    if output.plain:
        write_tsv(output.out, _HEADER, rows)
        return
    table = Table(title="demo outcomes", box=box.SIMPLE_HEAD)
    for name, ratio in zip(_HEADER, (2, 1, None, 1, None, 3), strict=True):
        table.add_column(name, overflow="fold", no_wrap=ratio is None, ratio=ratio)
    for row in rows:
        status = Text(row[2], style=STATUS_STYLE.get(row[2], ""))
        table.add_row(*(printable(v) for v in row[:2]), status, *(printable(v) for v in row[3:]))
    output.out.print(table)
