"""Thumbnails and full images of the dashboard: made from the stored image, tenant-scoped."""

from __future__ import annotations

import io

from PIL import Image

from imagegen.models import JobStatus
from tests.conftest import API_KEY
from tests.stored_jobs import put
from tests.ui.conftest import Dash


def test_a_thumbnail_is_a_small_webp_of_the_stored_image(dash: Dash) -> None:
    job = dash.stored_job(size=(400, 300))
    client = dash.logged_in(API_KEY)
    page = client.get("/ui/jobs").text
    assert f'<img class="thumb" src="/ui/jobs/{job}/thumb/0"' in page
    answer = client.get(f"/ui/jobs/{job}/thumb/0")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/webp"
    assert "private" in answer.headers["cache-control"]
    with Image.open(io.BytesIO(answer.content)) as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (192, 144))
        red, green, blue = thumb.convert("RGB").getpixel((96, 72))  # type: ignore[misc]
        assert red > 170 and green < 70 and blue < 70  # the image's colour, lossy
    again = client.get(f"/ui/jobs/{job}/thumb/0")
    assert again.content == answer.content  # from the cache: same bytes


def test_the_full_image_streams_the_stored_bytes(dash: Dash) -> None:
    job = dash.stored_job()
    client = dash.client(API_KEY)
    page = client.get(f"/ui/jobs/{job}").text
    assert f'<img class="full" src="/ui/jobs/{job}/image/0"' in page
    answer = client.get(f"/ui/jobs/{job}/image/0")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    with dash.storage.open(f"jobs/{job}/0.png") as stored:
        assert answer.content == stored.read()


def test_images_are_the_owners_only_and_need_a_login(dash: Dash) -> None:
    job = dash.stored_job(tenant="b")
    for path in (f"/ui/jobs/{job}/thumb/0", f"/ui/jobs/{job}/image/0"):
        assert dash.client(dash.a_key).get(path).status_code == 404, path
        assert dash.client(dash.b_key).get(path).status_code == 200, path
        assert dash.client().get(path).status_code == 303, path


def test_no_stored_image_is_a_404_not_a_500(dash: Dash) -> None:
    queued = dash.job(JobStatus.QUEUED)
    not_image = dash.stored_job()
    put(dash.storage, f"jobs/{not_image}/0.png", b"not a png at all")
    client = dash.client(API_KEY)
    for path in (f"/ui/jobs/{queued}/thumb/0", f"/ui/jobs/{not_image}/thumb/0",
                 f"/ui/jobs/{not_image}/thumb/1", f"/ui/jobs/{queued}/image/0"):  # fmt: skip
        answer = client.get(path)
        assert answer.status_code == 404, (path, answer.text)
    assert client.get(f"/ui/jobs/{not_image}/thumb/99").status_code in (404, 422)
