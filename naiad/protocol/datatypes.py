"""Re-export of :mod:`naiad.core.datatypes`: the datatype table lives in the core."""

from naiad.core.datatypes import *  # noqa: F401,F403
