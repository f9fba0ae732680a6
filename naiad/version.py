"""naiad's version (one place: the package, the server metadata and ``--version`` read it)."""

__version__ = "0.1.0"
