"""naiad: a Triton-compatible model inference server written in Python."""

__version__ = "0.1.0"

from naiad.options import ServerOptions  # noqa: E402
from naiad.server import Server  # noqa: E402

__all__ = ["Server", "ServerOptions", "__version__"]
