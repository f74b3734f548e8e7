"""Which URLs ``worker.media.fetch`` may fetch: http(s), and public hosts as written and resolved.

A host is refused when, as written, it names this machine (``localhost``, ``127.1``,
``2130706433``, ``[::ffff:127.0.0.1]``, ...) or a private, link-local, reserved or multicast
address, and when any address it resolves to does: a name whose DNS answer points inside is
as dangerous as the literal. IPv4 inside IPv6 (mapped, 6to4, NAT64) is judged as the IPv4.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

import httpx

from imagegen.worker.errors import DownloadFailed, UnsafeURL
from imagegen.worker.jobs.input_rules import _literal_address, check_text, shown

#: Presigned URLs with a session token run past 2,000 characters; this is generous.
MAX_URL_CHARS = 8192
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["MAX_URL_CHARS", "checked_addresses", "host_of", "parse_url", "refusal", "shown"]


def parse_url(url: str, label: str) -> httpx.URL:
    """``url`` parsed, or UnsafeURL: http(s), a host, a valid port, no user name or password."""
    if len(url) > MAX_URL_CHARS:
        raise UnsafeURL(f"{label} is longer than {MAX_URL_CHARS:,} characters")
    try:
        check_text(label, url)
    except ValueError as exc:
        raise UnsafeURL(str(exc)) from None
    if any(c.isspace() for c in url):
        raise UnsafeURL(f"{label} contains whitespace")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:  # its message may quote the URL
        raise UnsafeURL(f"{label} is not a valid URL") from None
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.raw_host:
        raise UnsafeURL(f"{label} must be an http:// or https:// URL with a host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeURL(f"{label} has an invalid port")
    if parsed.userinfo:
        raise UnsafeURL(f"{label} must not carry a user name or password")
    return parsed.copy_with(fragment=None)


def host_of(url: httpx.URL) -> str:
    """The host as sent on the wire (IDNA, lower case, IPv6 without brackets)."""
    return url.raw_host.decode("ascii")


def checked_addresses(
    url: httpx.URL, *, allow_private: bool, what: str, timeout_s: float
) -> list[str]:
    """The addresses ``url``'s host resolves to, all of them public unless ``allow_private``.

    ``what`` starts the messages ("the image URL's host"). Raises UnsafeURL, DownloadFailed
    (the name does not resolve) or TimeoutError (the resolver took over ``timeout_s``).
    """
    host = host_of(url)
    if not allow_private:
        reason = _written_refusal(host)
        if reason:
            raise UnsafeURL(f"{what} {shown(host)} is {reason}")
    port = url.port or _DEFAULT_PORTS[url.scheme]
    addresses = resolve(host, port, timeout_s, what=what)
    if not allow_private:
        for address in addresses:
            reason = refusal(ipaddress.ip_address(address))
            if reason:
                raise UnsafeURL(f"{what} {shown(host)} resolves to {address}, {reason}")
    return addresses


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not fetched from (None when it is public)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refusal(address.ipv4_mapped)
        embedded = address.sixtofour or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        )
        if embedded is not None and refusal(embedded):
            return f"which carries {embedded}, {refusal(embedded)}"
    if address.is_loopback or address.is_unspecified:
        return "this machine"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_reserved:
        return "a reserved address"
    return None


def _written_refusal(host: str) -> str | None:
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "this machine"
    address = _literal_address(name)  # also the legacy forms resolvers accept: 127.1, 0x7f.1
    return None if address is None else refusal(address)


def resolve(host: str, port: int, timeout_s: float, *, what: str) -> list[str]:
    """The host's addresses, in the resolver's order of preference, within ``timeout_s``.

    getaddrinfo cannot be interrupted, so it runs in a daemon thread we stop waiting for.
    """
    try:
        return [str(ipaddress.ip_address(host))]  # a literal needs no resolver
    except ValueError:
        pass
    answer: list[list[str] | OSError] = []

    def run() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            answer.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except OSError as exc:
            answer.append(exc)

    thread = threading.Thread(target=run, name="imagegen-resolve", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not answer:
        raise TimeoutError(f"resolving {host} took over {timeout_s:g} s")
    result = answer[0]
    if isinstance(result, OSError):
        temporary = isinstance(result, socket.gaierror) and result.errno == socket.EAI_AGAIN
        raise DownloadFailed(
            f"{what} {shown(host)} does not resolve ({result.strerror or 'no address'})",
            retryable=temporary,
        )
    if not result:
        raise DownloadFailed(f"{what} {shown(host)} resolves to no address", retryable=False)
    return result
