"""bench.media at tiny sizes: the emulator and moto start, copies go through, the JSON adds up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "images",
    "concurrent",
    "image_bytes",
    "concurrent_bytes",
    "copy_ms_p50",
    "copy_ms_p95",
    "cpu_ms_per_image",
    "rss_growth_mb",
    "rss_target_met",
}
PER_BACKEND = (
    "copy_ms_p50",
    "copy_ms_p95",
    "cpu_ms_per_image",
    "rss_baseline_mb",
    "rss_peak_mb",
    "rss_growth_mb",
)


@pytest.mark.slow
def test_a_tiny_run_copies_to_both_backends_and_prints_every_figure_as_the_last_line() -> None:
    argv = ["--images", "4", "--concurrent", "3", "--concurrent-bytes", "100000"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.media", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert KEYS | {f"{b}_{k}" for b in ("local", "s3") for k in PER_BACKEND} <= data.keys()
    assert (data["images"], data["concurrent"]) == (4, 3)
    assert (data["image_bytes"], data["concurrent_bytes"]) == (1_000_000, 100_000)
    for backend in ("local", "s3"):
        assert 0 < data[f"{backend}_copy_ms_p50"] <= data[f"{backend}_copy_ms_p95"] < 10_000
        assert 0 < data[f"{backend}_cpu_ms_per_image"] < 10_000
        assert data[f"{backend}_rss_peak_mb"] >= data[f"{backend}_rss_baseline_mb"] > 10
        assert data[f"{backend}_concurrent_failures"] == 0
    assert data["copy_ms_p50"] == data["local_copy_ms_p50"]
    assert data["rss_growth_mb"] == max(data["local_rss_growth_mb"], data["s3_rss_growth_mb"])
    assert data["rss_target_met"] is (data["rss_growth_mb"] < 100)
    assert "local: 4 copies" in done.stderr  # progress on stderr, not in the JSON line
