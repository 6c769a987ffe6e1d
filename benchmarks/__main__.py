"""``python -m benchmarks [--quick] [--only NAME ...]``: see benchmarks/cli.py."""

import sys

from benchmarks.cli import main

sys.exit(main())
