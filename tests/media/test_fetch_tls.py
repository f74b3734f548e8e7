"""worker.media.fetch over HTTPS: the pinned address still has its certificate checked
against the host name (SNI), connections are not reused across names, SSL_CERT_FILE works."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from imagegen.worker.errors import DownloadFailed
from imagegen.worker.media.fetch import new_client

from .servers import BODY, PUBLIC, SECRET, FakeNet, fails, fetch_bytes, serve


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> FakeNet:
    return FakeNet(monkeypatch)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_port(ca: trustme.CA) -> Iterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("images.test").configure_cert(context)
    with serve(context) as port:
        yield port


def _trusting(ca: trustme.CA) -> httpx.Client:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return new_client(verify=context)


def test_https_pinned_address_still_checks_the_name(
    tls_port: int, ca: trustme.CA, net: FakeNet
) -> None:
    net.name("images.test", [PUBLIC])
    net.name("other.test", [PUBLIC])
    net.nat.add(PUBLIC)
    with _trusting(ca) as client:
        # The right name passes, connected to the checked (public) address...
        got, body = fetch_bytes(
            f"https://images.test:{tls_port}/img{SECRET}", client=client, allow_private=False
        )
        assert body == BODY and got.bytes == len(BODY)
        assert net.connects == [(PUBLIC, tls_port)]
        # ...a name the certificate is not for fails, on the same client (no pooled reuse of
        # the first connection, which went to the same IP and port)...
        error = fails(
            DownloadFailed,
            f"https://other.test:{tls_port}/img{SECRET}",
            client=client,
            allow_private=False,
        )
        assert "its TLS certificate is not valid" in str(error)
        assert "other.test" in str(error) and error.retryable is False
        # ...and so does the bare IP, which the certificate does not name.
        error = fails(DownloadFailed, f"https://127.0.0.1:{tls_port}/img", client=client)
        assert "its TLS certificate is not valid" in str(error)


def test_https_unknown_ca_and_ssl_cert_file(
    tls_port: int,
    ca: trustme.CA,
    net: FakeNet,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    net.name("images.test", ["127.0.0.1"])
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    error = fails(DownloadFailed, f"https://images.test:{tls_port}/img")
    assert "its TLS certificate is not valid" in str(error)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the client fetch makes honours it
    _, body = fetch_bytes(f"https://images.test:{tls_port}/img")
    assert body == BODY
