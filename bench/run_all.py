"""Run every benchmark (full size, or ``--quick``) and write bench/results/<name>.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = (
    "hub_ingest", "hub_burst", "edge_capacity", "command_rtt", "bacnet_read", "city_night", "dali_bus",
    "bacnet_cov", "edge_buffer", "policy_latency",
)


def main() -> int:
    """Run each benchmark in its own process; the exit code is the number that failed."""
    here = Path(__file__).resolve().parent
    extra = [a for a in sys.argv[1:] if a == "--quick"]
    failed = 0
    for name in BENCHES:
        print(f"== {name}", flush=True)
        rc = subprocess.run([sys.executable, str(here / f"{name}.py"), "--json", *extra]).returncode
        if rc:
            print(f"{name} failed (exit {rc})", flush=True)
            failed += 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
