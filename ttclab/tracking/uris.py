"""Where tracking data lives and how names travel in URIs, file names and search filters; the
errors about them. No mlflow import here, so sweeps and the CLI can use these cheaply."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import UserError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def home() -> Path:
    """Where the default store, artifacts and local sweep journals live: $TTCLAB_HOME, else the
    repository root for a source checkout (so `mlflow ui` run there sees the same store), else
    ~/.ttclab. Absolute, so the store does not depend on the current directory."""
    if os.environ.get("TTCLAB_HOME"):
        return Path(os.environ["TTCLAB_HOME"]).expanduser().resolve()
    if (PACKAGE_ROOT / "pyproject.toml").is_file() and (PACKAGE_ROOT / "MLproject").is_file():
        return PACKAGE_ROOT
    return Path.home() / ".ttclab"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def safe_name(name: str) -> str:
    """A file-name-safe form of a URI or name."""
    return re.sub(r"[^\w.-]", "_", name)


class TrackingError(UserError):
    """A tracking store, run, model or artifact that cannot be used as given."""


def redact(uri: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`: what is printed, logged
    and tagged. Textual, so it also hides the password of a URL SQLAlchemy cannot parse."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", uri)


def quoted(value) -> str:
    """A value as an MLflow search-filter string literal. The filter grammar has no escape
    character, but either quote may delimit a string: use the one the value does not contain."""
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise TrackingError(f"{text!r}: a name used in run searches may not contain both ' and \"; rename it")


def check_server(uri: str) -> None:
    """Fail fast, in one line, when no MLflow server answers (the client itself would retry for
    minutes and then print a long traceback)."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]  # credentials are not needed to see that a server answers
    try:
        urllib.request.urlopen(f"{parts.scheme}://{host}{parts.path.rstrip('/')}/health", timeout=5).close()
    except urllib.error.HTTPError:
        return  # a server answered (perhaps asking for credentials): the client reports what it says
    except (OSError, ValueError) as err:
        raise TrackingError(f"MLFLOW_TRACKING_URI={redact(uri)}: no MLflow server answers there "
                            f"({getattr(err, 'reason', err)}); start it (`mlflow server ...`) or fix the URI") from None
