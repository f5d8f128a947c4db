"""`python -m benchmarks [--quick] [--markdown]` runs benchmarks/bench_core.py."""

import sys

from .bench_core import main

sys.exit(main())
