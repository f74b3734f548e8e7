"""docker-compose.yml, the Dockerfile and the code they start cannot drift apart.

No Docker engine runs here, so the compose file is read as data: services and their order,
secrets required from the environment, and every command checked against the real CLIs
(imagegen's Typer app, Celery's click commands, Flower's options) and against
``worker_argv()``, the worker command the tests, the demo and the benchmarks run.
"""

from __future__ import annotations

import itertools
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from imagegen.worker.constants import JOB_QUEUE
from tests.conftest import ROOT

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
IMAGEGEN_SERVICES = ("migrate", "worker", "beat", "flower", "api", "fal-emulator")
#: Compose interpolation: $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME:?message}, ...
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def argv(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def depends_on(service: str) -> dict[str, dict[str, Any]]:
    deps = SERVICES[service].get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return dict(deps)


def interpolate(value: str, env: dict[str, str]) -> str:
    """What compose makes of ``value`` with ``env`` set (enough of its rules for these tests)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        current = env.get(name)
        if op in (":-", "-") and (current is None or (op == ":-" and current == "")):
            return arg
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise AssertionError(f"compose would refuse to start: {name} unset ({arg})")
        return current or ""

    return INTERPOLATION.sub(one, value)


def option_names(args: list[str]) -> list[str]:
    """The options an argv uses (``--name`` of ``--name=value``), in order."""
    return [a.split("=", 1)[0] for a in args if a.startswith("-")]


def test_every_service_is_defined() -> None:
    expected = {"postgres", "redis", *IMAGEGEN_SERVICES}
    assert expected <= set(SERVICES), f"missing: {expected - set(SERVICES)}"


def test_postgres_and_redis_have_healthchecks_and_named_volumes() -> None:
    named = set(COMPOSE.get("volumes") or {})
    for service, image, data_dir in (
        ("postgres", "postgres:16", "/var/lib/postgresql/data"),
        ("redis", "redis:7", "/data"),
    ):
        spec = SERVICES[service]
        assert spec["image"] == image
        assert "healthcheck" in spec, f"{service} needs a healthcheck for depends_on"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in spec["volumes"]}
        assert mounts.get(data_dir) in named, f"{service}: {data_dir} must be a named volume"
    assert "pg_isready" in SERVICES["postgres"]["healthcheck"]["test"]
    assert "ping" in SERVICES["redis"]["healthcheck"]["test"]


def test_secrets_are_required_from_the_environment() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "IMAGEGEN_API_KEY"):
        uses = [m for m in INTERPOLATION.finditer(text) if m.group("name") == name]
        assert uses, f"{name} is not used"
        assert all(m.group("op") == ":?" for m in uses), f"{name} must be ${{{name}:?…}}"
    assert environment("api")["IMAGEGEN_API_KEY"].startswith("${IMAGEGEN_API_KEY:?")
    flower_auth = environment("flower")["FLOWER_BASIC_AUTH"]
    assert flower_auth.startswith("${FLOWER_BASIC_AUTH:?"), flower_auth
    assert not any("basic" in a for a in argv("flower")), "credentials on Flower's command line"


def test_every_dollar_is_a_valid_interpolation() -> None:
    for number, line in enumerate((ROOT / "docker-compose.yml").read_text().splitlines(), 1):
        rest = INTERPOLATION.sub("", line.split(" #", 1)[0] if line.lstrip()[:1] != "#" else "")
        assert "$" not in rest, f"docker-compose.yml:{number}: stray $ in {line.strip()!r}"


def test_migrations_run_once_before_anything_uses_the_database() -> None:
    assert argv("migrate") == ["imagegen", "db", "upgrade"]
    assert SERVICES["migrate"]["restart"] == "no"
    assert depends_on("migrate")["postgres"]["condition"] == "service_healthy"
    for service in ("worker", "beat", "api"):
        deps = depends_on(service)
        assert deps["migrate"]["condition"] == "service_completed_successfully", service
        assert deps["redis"]["condition"] == "service_healthy", service


def test_worker_scales() -> None:
    worker = SERVICES["worker"]
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker, f"worker has {key}: `--scale worker=N` would clash"


def test_each_worker_serves_its_metrics_inside_the_network() -> None:
    from imagegen.worker.settings import Settings

    port = environment("worker")["IMAGEGEN_WORKER_METRICS_PORT"]
    settings = Settings(**{"IMAGEGEN_WORKER_METRICS_PORT": port})
    assert settings.worker_metrics_port == int(port)
    assert [str(p) for p in SERVICES["worker"]["expose"]] == [port]
    for service in ("api", "beat", "flower", "migrate"):
        assert "IMAGEGEN_WORKER_METRICS_PORT" not in environment(service), service


def test_worker_command_is_worker_argv() -> None:
    from imagegen.worker.celery_app import worker_argv

    code = worker_argv(concurrency=1)
    assert code[:3] == [sys.executable, "-m", "celery"]
    expected, actual = ["celery", *code[3:]], argv("worker")
    threads = actual[actual.index("--concurrency") + 1]
    assert re.fullmatch(r"\$\{IMAGEGEN_WORKER_THREADS:-\d+\}", threads), threads
    expected[expected.index("--concurrency") + 1] = threads
    assert actual == expected, "docker-compose.yml's worker and worker_argv() disagree"
    pairs = list(itertools.pairwise(actual))
    for pair in (("-A", "imagegen.worker"), ("--pool", "threads")):
        assert pair in pairs, f"worker command lacks {' '.join(pair)}"
    queues = actual[actual.index("-Q") + 1].split(",")
    assert JOB_QUEUE in queues, f"the worker does not consume {JOB_QUEUE!r}: {queues}"


def test_beat_runs_the_sweeper_schedule() -> None:
    assert argv("beat")[:5] == ["celery", "-A", "imagegen.worker", "--quiet", "beat"], (
        "JSON lines only"
    )
    assert "replicas" not in (SERVICES["beat"].get("deploy") or {}), "one beat per fleet"


def test_flower_is_persistent_behind_basic_auth() -> None:
    args = argv("flower")
    assert args[:4] == ["celery", "-A", "imagegen.worker", "flower"]
    assert "--port=5555" in args
    assert "--persistent=True" in args
    assert "--read_only=True" in args, "Flower must not send, revoke or kill tasks"
    db = next(a.split("=", 1)[1] for a in args if a.startswith("--db="))
    mounts = [v.split(":")[1] for v in SERVICES["flower"]["volumes"]]
    assert any(db.startswith(m + "/") for m in mounts), f"Flower's --db {db} is not on a volume"
    assert any(p.endswith(":5555") for p in SERVICES["flower"]["ports"])
    assert "/healthcheck" in " ".join(SERVICES["flower"]["healthcheck"]["test"])


def test_api_serves_on_all_interfaces_with_a_healthcheck() -> None:
    args = argv("api")
    assert args[:2] == ["imagegen", "api"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    port = args[args.index("--port") + 1]
    assert any(p.endswith(f":{port}") for p in SERVICES["api"]["ports"])
    assert f"127.0.0.1:{port}/healthz" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_emulator_is_optional_and_reachable_by_its_service_name(tmp_path: Path) -> None:
    emulator = SERVICES["fal-emulator"]
    assert emulator["profiles"] == ["emulator"]
    others = [s for s in SERVICES if s != "fal-emulator" and SERVICES[s].get("profiles")]
    assert not others, f"only the emulator is optional: {others}"
    for service in SERVICES:
        dep = depends_on(service).get("fal-emulator")
        assert dep is None or dep.get("required") is False, f"{service} needs the emulator"
    # Its certificate and the URLs it hands out name the host it binds to.
    args = argv("fal-emulator")
    assert args[args.index("--host") + 1] == emulator["hostname"] == "fal-emulator"
    cert_dir = args[args.index("--cert-dir") + 1]
    for service in ("fal-emulator", "worker", "api"):
        mounts = [v.split(":")[1] for v in SERVICES[service]["volumes"]]
        assert cert_dir in mounts, f"{service} does not mount the emulator's CA ({cert_dir})"
    from imagegen.worker.fal.emulator import FalEmulator

    with FalEmulator(cert_dir=tmp_path) as running:
        ca_name = Path(running.ca_file).name
    assert f"{cert_dir}/{ca_name}" in " ".join(emulator["healthcheck"]["test"])


def test_shared_environment_is_valid_settings() -> None:
    from imagegen.worker.settings import Settings

    shared = COMPOSE["x-imagegen-env"]
    assert shared["DATABASE_URL"].startswith("postgresql://postgres:${POSTGRES_PASSWORD:?")
    assert shared["DATABASE_URL"].endswith("@postgres:5432/imagegen")
    assert shared["REDIS_URL"] == "redis://redis:6379/0"
    assert shared["FAL_KEY"] == "${FAL_KEY:-}"
    assert shared["IMAGEGEN_LOG_FORMAT"] == "json"
    for service in IMAGEGEN_SERVICES:
        env = environment(service)
        assert {k: env.get(k) for k in shared} == shared, f"{service} lacks the shared env"
    host = {"POSTGRES_PASSWORD": "pw", "FLOWER_BASIC_AUTH": "u:p", "IMAGEGEN_API_KEY": "k"}
    resolved = {k: interpolate(v, host) for k, v in shared.items()}
    settings = Settings(**resolved)  # type: ignore[arg-type]  # aliases are env names
    assert settings.database_url == "postgresql+psycopg://postgres:pw@postgres:5432/imagegen"
    assert settings.fal_key is None or not settings.fal_key.get_secret_value()
    assert resolved["FAL_QUEUE_RUN_HOST"] == "queue.fal.run", "fal.ai unless told otherwise"


def _walk(group: Any, args: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command an argv names in a click group, and the arguments left for it.

    Duck-typed: Typer ships its own copy of click, so its commands are not click's classes.
    """
    command = group
    while args and hasattr(command, "commands") and not args[0].startswith("-"):
        sub = command.commands.get(args[0])
        assert sub is not None, f"no command {args[0]!r} in {command.name!r}"
        command, args = sub, args[1:]
    return command, args


def _assert_options_exist(command: Any, args: list[str], where: str) -> None:
    known = {opt for param in command.params for opt in param.opts}
    unknown = [o for o in option_names(args) if o not in known]
    assert not unknown, f"{where}: {' '.join(unknown)} not accepted by {command.name!r}"


def test_every_role_is_an_imagegen_or_celery_command() -> None:
    programs = {service: argv(service)[0] for service in IMAGEGEN_SERVICES}
    assert set(programs.values()) <= {"imagegen", "celery"}, programs


@pytest.mark.parametrize("service", [s for s in IMAGEGEN_SERVICES if argv(s)[0] == "imagegen"])
def test_imagegen_commands_exist(service: str) -> None:
    """`imagegen api` comes from the HTTP API work; this fails until it exists."""
    from imagegen.worker.cli import cli

    command, rest = _walk(typer.main.get_command(cli), argv(service)[1:])
    assert not hasattr(command, "commands"), f"{service}: {argv(service)} names a group"
    _assert_options_exist(command, rest, service)


@pytest.mark.parametrize("service", [s for s in IMAGEGEN_SERVICES if argv(s)[0] == "celery"])
def test_celery_commands_exist(service: str) -> None:
    from celery.bin.celery import celery

    args = argv(service)
    assert args[1:3] == ["-A", "imagegen.worker"], (
        f"{service} must load the app with -A imagegen.worker"
    )
    tail = args[3:]
    global_options = list(itertools.takewhile(lambda a: a.startswith("-"), tail))
    _assert_options_exist(celery, global_options, f"{service} (celery's own options)")
    command, rest = _walk(celery, tail[len(global_options) :])
    if command.name == "flower":  # Tornado options, --name=value, - and _ alike
        from flower.options import options

        known = {name.replace("_", "-") for name in options._options}
        unknown = [o for o in option_names(rest) if o[2:].replace("_", "-") not in known]
        assert not unknown, f"{service}: Flower has no option {unknown}"
        return
    _assert_options_exist(command, rest, service)


def test_services_share_one_image_built_from_the_repository() -> None:
    images = {SERVICES[s]["image"] for s in IMAGEGEN_SERVICES}
    assert len(images) == 1, images
    assert all(SERVICES[s]["build"] == "." for s in IMAGEGEN_SERVICES)


def _dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    lines = _dockerfile()
    bases = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert bases and all(b == "python:3.11-slim" for b in bases), bases
    runs = " ".join(line for line in lines if line.upper().startswith("RUN "))
    assert re.search(r"pip install( -\S+)* \.( |$)", runs), "the project is not pip-installed"
    assert "[dev]" not in runs, "the image must not carry the dev extras"
    final = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM ")) :]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    assert any(line.upper().startswith(("CMD ", "ENTRYPOINT ")) for line in final)


def test_docker_build_context_holds_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = {
        src.rstrip("/")
        for line in _dockerfile()
        if line.upper().startswith("COPY ") and "--from" not in line
        for src in line.split()[1:-1]
    }
    needed = {"pyproject.toml", "README.md", *packages}
    assert needed <= copied, f"the Dockerfile does not copy {needed - copied}"
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git"} <= ignored
    assert not needed & ignored, f".dockerignore drops {needed & ignored}"
