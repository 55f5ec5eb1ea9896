"""A throwaway PostgreSQL cluster on loopback for the multi-machine tests (test_sweep_postgres.py,
test_tracking_server.py), and the helpers they share: free ports, waiting for a server, stopping a
process group.

The cluster lives in a temporary folder directly under the system temp dir (pytest's own folders are
private to root, and the server runs as `postgres` when the tests run as root, since initdb refuses
root). Trust authentication on 127.0.0.1 only: any password in a URL is accepted, so tests can put
one in and check that it is never printed.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest


def bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cluster(databases: tuple[str, ...] = ()):
    """Start a cluster, create `databases`, yield `postgresql+psycopg2://ttclab@127.0.0.1:<port>`
    (append `/<db>`); stop it and delete its folder at the end. Skips when the server binaries
    cannot be found or started."""
    pytest.importorskip("psycopg2")
    bins = bindir()
    if bins is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    folder = Path(tempfile.mkdtemp(prefix="ttclab-pg-"))
    data = folder / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    for cmd in ([str(bins / "initdb"), "-D", str(data), "-A", "trust", "-U", "ttclab"],
                [str(bins / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "-t", "30", "start"]):
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"could not start a throwaway PostgreSQL ({Path(cmd[0]).name}: {done.stderr.strip()[-200:]})")
    try:
        url = f"postgresql+psycopg2://ttclab@127.0.0.1:{port}"
        if databases:
            import psycopg2

            conn = psycopg2.connect(host="127.0.0.1", port=port, user="ttclab", dbname="postgres")
            conn.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
            with conn.cursor() as cur:
                for name in databases:
                    cur.execute(f'CREATE DATABASE "{name}"')
            conn.close()
        yield url
    finally:
        subprocess.run([*as_user, str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    """Until `url` answers 200; fails with the process's exit code if it dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with code {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def stop_group(proc: subprocess.Popen, timeout_s: float = 3.0) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session=True), SIGKILL what
    is left after `timeout_s` (a server waiting for idle keep-alive clients): its worker processes
    go with it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their leader
    except ProcessLookupError:
        pass
    proc.wait()
