"""Rules for the free text and URLs a job request carries (used by ``worker.jobs.params``).

Text must encode as UTF-8 (a lone surrogate does not, and would fail later at the
database) and carry no control characters but tab and newline: an ESC sequence stored in
a prompt would reach every terminal that later shows the job.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from imagegen.worker.constants import MAX_CALLBACK_URL_CHARS

SURROGATE = re.compile("[\ud800-\udfff]")
#: C0 controls but tab and newline, DEL, and the C1 controls (U+009B is a CSI on some terminals)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {0x00: "NUL", 0x07: "bell", 0x08: "backspace", 0x0D: "carriage return"}
_CONTROL_NAMES |= {0x1B: "ESC", 0x7F: "DEL", 0x9B: "CSI"}
_SHOWN_CHARS = 40
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")


def check_text(name: str, value: str) -> None:
    """Raise ValueError naming ``name`` when ``value`` is not valid UTF-8 or has controls."""
    surrogate = SURROGATE.search(value)
    if surrogate:
        raise ValueError(
            f"{name} is not valid UTF-8 (a lone surrogate at character {surrogate.start()})"
        )
    control = _CONTROL.search(value)
    if control:
        code = ord(control.group())
        label = f"U+{code:04X}" + (f" ({_CONTROL_NAMES[code]})" if code in _CONTROL_NAMES else "")
        raise ValueError(
            f"{name} contains the control character {label} at character {control.start()}; "
            "only tab and newline are allowed"
        )


def shown(value: object) -> str:
    """A user's value, quoted and escaped for an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def printable(text: str) -> str:
    """``text`` with every unprintable character escaped (a field name a client chose)."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:100])
    return escaped + ("…" if len(text) > 100 else "")


def check_callback_url(url: str, *, allow_private: bool) -> None:
    """Raise ValueError unless ``url`` is an http(s) URL a worker may POST a job to."""
    if len(url) > MAX_CALLBACK_URL_CHARS:
        raise ValueError(f"the callback URL is longer than {MAX_CALLBACK_URL_CHARS} characters")
    check_text("the callback URL", url)
    if any(c.isspace() for c in url):
        raise ValueError("the callback URL contains whitespace")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the callback URL must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError("the callback URL has an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("the callback URL must not carry a user name or password")
    if not allow_private:
        _check_public(parts.hostname)


def _check_public(host: str) -> None:
    """Refuse hosts that are, as written, this machine or a private network."""
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        raise ValueError(_private_message(host, "this machine"))
    address = _literal_address(host)
    if address is None:
        return
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_unspecified:
        raise ValueError(_private_message(host, "this machine"))
    if not address.is_global or address.is_multicast:
        raise ValueError(_private_message(host, "a private, link-local or reserved address"))


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):  # 2130706433, 127.1, 0x7f.0.0.1: resolvers take them all
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _private_message(host: str, what: str) -> str:
    return (
        f"the callback URL's host {shown(host)} is {what}; callbacks go to public addresses "
        "unless IMAGEGEN_CALLBACK_ALLOW_PRIVATE=true"
    )
