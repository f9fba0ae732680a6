"""naiad: a Triton-compatible model inference server written in Python."""

from naiad.options import ServerOptions
from naiad.server import Server
from naiad.version import __version__

__all__ = ["Server", "ServerOptions", "__version__"]
