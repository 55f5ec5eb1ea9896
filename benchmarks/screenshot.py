"""Screenshots of the comparison page and the MLflow runs table in headless Chromium, for a
developer changing figures to look at (not a test: no chromium in CI).

    python benchmarks/screenshot.py                 # newest compare run of projects/euler1d.yaml's store
    python benchmarks/screenshot.py --out /tmp/shots --port 5077

Needs Debian's `chromium` (or chromium-browser / google-chrome on PATH); without one it says so and
exits 0. Writes compare.png and runs_table.png and fails when a page renders blank (fewer than 8
distinct colours in the PNG's pixel rows, i.e. an empty white page).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def shoot(browser: str, url: str, out: Path, size: str = "1400,2600") -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", "--virtual-time-budget=15000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)


def colours(png: Path) -> int:
    """Distinct byte values of the decompressed image rows: a blank page has only a handful."""
    data, pos, idat = png.read_bytes(), 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("screenshots"))
    ap.add_argument("--port", type=int, default=5077)
    args = ap.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("no chromium on PATH (apt-get install chromium): nothing to screenshot")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ttclab.tracking.store import Tracker, default_tracking_uri

    tracker = Tracker(default_tracking_uri())
    runs = tracker.runs({"ttclab.stage": "compare"}, status="FINISHED")
    if not runs:
        print("no finished compare run in the store: run `ttclab demo projects/euler1d.yaml` first")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    page = tracker.artifact_dir(runs[0].info.run_id) / "figures" / "compare.html"
    shoot(browser, page.as_uri(), args.out / "compare.png")
    server = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", tracker.uri, "--host", "127.0.0.1",
                               "--port", str(args.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):  # the server's start-up: up to a minute on a busy machine
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", args.port)) == 0:
                    break
            time.sleep(0.5)
        time.sleep(2)
        url = f"http://127.0.0.1:{args.port}/#/experiments/{runs[0].info.experiment_id}/runs"
        shoot(browser, url, args.out / "runs_table.png", "1600,1000")
    finally:
        server.terminate()
        server.wait(timeout=30)
    blank = [p.name for p in (args.out / "compare.png", args.out / "runs_table.png") if colours(p) < 8]
    print(f"screenshots in {args.out}/" + (f"; BLANK: {', '.join(blank)}" if blank else ""))
    return 1 if blank else 0


if __name__ == "__main__":
    sys.exit(main())
