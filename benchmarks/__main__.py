"""``python -m benchmarks --suite NAME [--quick] [--seeds ...] [--only ...]``: see benchmarks/harness.py."""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: busy-waiting OpenMP threads stall shared CPUs
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import main

main()
