"""A sweep worker process: `python -m ttclab.sweep '<job json>'`, started by `ttclab sweep --workers N`.

Kept apart from worker.py so the package import does not load the module `-m` is about to run.
"""

import json
import sys

from ..config import ConfigError
from ..stages import set_threads
from .worker import WorkerJob, work


def main(argv: list[str]) -> int:
    set_threads()
    try:
        work(WorkerJob(**json.loads(argv[0])))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


sys.exit(main(sys.argv[1:]))
