"""``naiad perf``: perf_analyzer's measurements, over HTTP or gRPC, against any Triton.

``naiad perf -m MODEL [perf_analyzer options]`` generates load at each level
of a concurrency or request-rate range, measures client throughput and
latency over stable windows, reads the server-side breakdown from the
statistics extension, and prints, writes (``-f`` CSV, ``--profile-export-file``
JSON) and plots (``--plot``) the results as perf_analyzer does. See
docs/tools/perf.md.

Layout: ``options`` (command line) -> ``runner`` (set-up, report) ->
``profiler`` (windows, stability, search) -> ``engine`` (load, worker
processes) -> ``transports`` (HTTP/gRPC requests) over ``http_wire``;
``control`` asks the server for metadata, config and statistics; ``data``
makes the input tensors; ``report`` prints and writes.
"""

from naiad.tools.perf.options import PerfOptions, parse
from naiad.tools.perf.runner import PerfError, PerfRun, finish, main, run

__all__ = ["PerfError", "PerfOptions", "PerfRun", "finish", "main", "parse", "run"]
