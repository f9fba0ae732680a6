"""Triton's python-backend utility module name, served by naiad.

Python models do ``import triton_python_backend_utils as pb_utils``; inside
the server, and in any script that imports this module (for unit-testing a
model), the name resolves to ``naiad.backends.python.pb_utils``.
"""

import sys

from naiad.backends.python import pb_utils as _pb_utils

sys.modules[__name__] = _pb_utils
