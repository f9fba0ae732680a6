"""``python -m naiad`` is the ``naiad`` command."""

import sys

from naiad.cli import main

sys.exit(main())
