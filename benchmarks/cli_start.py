"""Start-up time of the command line, next to a bare interpreter, measured side by side.

Interleaves `python -c pass`, `ttclab --help`, `ttclab train --help` and an argument error
(`ttclab train`, no project) and prints min and median wall seconds of each over the repeats.
For reference it also times `python -c "import torch, mlflow"`, what every command paid before the
stage table in cli.py made help and argument errors import neither.

    python benchmarks/cli_start.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

PY = sys.executable
TTCLAB = os.path.join(os.path.dirname(PY), "ttclab")  # the installed console script
COMMANDS = {
    "python -c pass": [PY, "-c", "pass"],
    "ttclab --help": [TTCLAB, "--help"],
    "ttclab train --help": [TTCLAB, "train", "--help"],
    "ttclab train (argument error)": [TTCLAB, "train"],
    "import torch, mlflow": [PY, "-c", "import torch, mlflow"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    bare = statistics.median(times["python -c pass"])
    print(f"load average {os.getloadavg()[0]:.2f}; {args.repeats} interleaved repeats")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:32s} min {min(t):6.3f} s  median {med:6.3f} s  ({med / bare:5.1f}x python -c pass)")


if __name__ == "__main__":
    main()
