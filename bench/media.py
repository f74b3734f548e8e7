"""bench.media: what the store stage's copy of an image costs, to local storage and to S3.

``python -m bench.media``. The fal emulator (``imagegen fal-emulator``) and moto's S3 server
run as their own processes on 127.0.0.1, so this process's CPU and RSS are the copier's:
``worker.jobs.store._stored`` (fetch to a temporary file, inspect, ``put_file``) per image.

1. ``--images`` copies of a ``--image-bytes`` image, one after another, each to a fresh key:
   ``{local,s3}_copy_ms_p50/p95`` and CPU per image (``getrusage``, every thread).
2. ``--concurrent`` copies of a ``--concurrent-bytes`` image at once (that many threads, one
   shared fetch client), local then S3: peak VmRSS sampled every 20 ms, minus the RSS just
   before (``rss_growth_mb``; the target is under 100 MB).

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from bench.host import Emulator
from bench.media_copy import CopyDeps, CopySettings, copy_concurrent, copy_sequential
from bench.media_services import MotoServer, image_url
from imagegen.worker.media.fetch import new_client
from imagegen.worker.media.storage import Storage, open_storage

RSS_TARGET_MB = 100
#: generous: 200 downloads at once share two cores with the emulator and moto
DOWNLOAD_TIMEOUT_S = 600.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__)
    parser.add_argument("--images", type=int, default=100, help="sequential copies a backend")
    parser.add_argument("--concurrent", type=int, default=200, help="copies at once (threads)")
    parser.add_argument("--image-bytes", type=int, default=1_000_000, help="sequential size")
    parser.add_argument("--concurrent-bytes", type=int, default=8_000_000, help="concurrent size")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


@contextmanager
def services(work: Path) -> Iterator[tuple[Emulator, MotoServer]]:
    """The emulator and moto, stopped on the way out whatever happened."""
    with ExitStack() as stack:
        emulator = Emulator(latency_s=0, concurrency=10_000, work_dir=work)
        stack.callback(emulator.stop)
        emulator.start()
        moto = MotoServer(work / "moto.log")
        stack.callback(moto.stop)
        moto.start()
        yield emulator, moto


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with services(work) as (emulator, moto):
        progress(f"emulator on {emulator.base_url}, moto S3 on {moto.endpoint}")
        # fetch's client trusts the emulator's CA the way the worker would: SSL_CERT_FILE
        os.environ["SSL_CERT_FILE"] = emulator.env["SSL_CERT_FILE"]
        moto.point_aws_here()
        small = image_url(emulator, args.image_bytes)
        big = image_url(emulator, args.concurrent_bytes)
        limit = max(args.image_bytes, args.concurrent_bytes) + 1
        settings = CopySettings(image_max_bytes=limit, download_timeout_s=DOWNLOAD_TIMEOUT_S)
        with new_client() as files:
            local_dir = work / "local"
            backends: dict[str, Storage] = {
                "local": open_storage(f"file://{local_dir}"),
                "s3": open_storage(f"s3://{moto.new_bucket()}/images"),
            }
            data: dict[str, Any] = {}
            for name, storage in backends.items():
                deps = CopyDeps(settings, storage, files)
                progress(f"{name}: {args.images} copies of {args.image_bytes:,} bytes, in turn")
                seq = copy_sequential(deps, small, args.image_bytes, args.images, progress)
                data.update(seq.summary(f"{name}_"))
                progress(f"{name}: {args.concurrent} copies of {args.concurrent_bytes:,} at once")
                conc = copy_concurrent(deps, big, args.concurrent_bytes, args.concurrent)
                data.update(conc.summary(f"{name}_"))
                for failure in sorted(set(conc.failures))[:5]:
                    progress(f"  failed: {failure}")
                progress(f"  {name}: {json.dumps({k: v for k, v in data.items() if name in k})}")
                shutil.rmtree(local_dir, ignore_errors=True)  # 1.6 GB at the defaults
    return _figures(args, data)


def _figures(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    growth = max(data["local_rss_growth_mb"], data["s3_rss_growth_mb"])
    cpu = (data["local_cpu_ms_per_image"] + data["s3_cpu_ms_per_image"]) / 2
    return {
        "images": args.images,
        "concurrent": args.concurrent,
        "image_bytes": args.image_bytes,
        "concurrent_bytes": args.concurrent_bytes,
        "copy_ms_p50": data["local_copy_ms_p50"],
        "copy_ms_p95": data["local_copy_ms_p95"],
        "cpu_ms_per_image": round(cpu, 2),
        **data,
        "rss_growth_mb": growth,
        "rss_target_met": growth < RSS_TARGET_MB,
        "cpu_count": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="bench-media-"))
    code = 1
    try:
        data = measure(args, work)
        failed = data["local_concurrent_failures"] + data["s3_concurrent_failures"]
        code = 0 if failed == 0 else 1
        print(json.dumps(data), flush=True)
        return code
    except KeyboardInterrupt:
        progress("interrupted: the emulator and moto are stopped, the temporary files removed")
        code = 130
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)
        keep = args.keep_logs or code not in (0, 130)  # a failure's logs are worth a look
        shutil.rmtree(work / "local", ignore_errors=True)
        if keep:
            progress(f"logs kept in {work} (emulator.log, moto.log)")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
