"""Commands that run something: the fal emulator, the HTTP API, the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imagegen.worker.cli.app import app_settings, cli, err, out, plain
from imagegen.worker.cli.demo import IMAGES_DIR
from imagegen.worker.cli.errors import errors


@cli.command("fal-emulator")
def fal_emulator(
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 8443,
    host: str = "127.0.0.1",
    latency: Annotated[float, typer.Option(help="Seconds per generation")] = 2.0,
    concurrency: Annotated[int | None, typer.Option(help="Account concurrency limit")] = None,
    cert_dir: Annotated[str | None, typer.Option(help="Where to write ca.pem")] = None,
    round_trip: Annotated[
        float,
        typer.Option(min=0, help="Seconds added to every answer (network and fal's handling)"),
    ] = 0.0,
) -> None:
    """Serve fal's queue protocol over HTTPS locally (prints the env to point workers at it)."""
    from imagegen.worker.fal.emulator import serve

    serve(
        host=host,
        port=port,
        latency_s=latency,
        concurrency_limit=concurrency,
        cert_dir=cert_dir,
        round_trip_s=round_trip,
    )


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (needs IMAGEGEN_API_KEY; OpenAPI at /docs)."""
    import uvicorn

    from imagegen.worker.logs import configure, uvicorn_log_config
    from imagegen.worker.web import create_app

    with errors():
        create_app()  # fail here, with one line, when the configuration is incomplete
        configure(app_settings().log_format)
        uvicorn.run(
            "imagegen.worker.web:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=uvicorn_log_config(app_settings().log_format),
            access_log=False,  # worker.web.access logs each request instead
        )


@cli.command()
def demo(
    emulator: Annotated[
        bool | None,
        typer.Option(
            "--emulator/--real-fal",
            help="The bundled emulator, or fal.ai (billed); default: fal.ai if FAL_KEY is set",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before spending")] = False,
    images_dir: Annotated[
        Path, typer.Option(help="Where to save the generated images")
    ] = IMAGES_DIR,
) -> None:
    """Run a batch of ~20 prompts end to end, print the outcome table and save the images."""
    import os

    from imagegen.worker.cli.demo import run_demo

    real_fal = bool(os.environ.get("FAL_KEY")) if emulator is None else not emulator
    with errors():
        run_demo(
            real_fal=real_fal,
            assume_yes=yes,
            out=out,
            err=err,
            plain=plain(),
            images_dir=images_dir,
        )
