"""An HTTPS emulator of fal.ai's queue REST protocol, for tests and local runs."""

from .server import FalEmulator, serve

__all__ = ["FalEmulator", "serve"]
