"""A sweep worker process: `python -m ttclab.sweep '<job json>'`, started by `ttclab sweep --workers N`.

Kept apart from worker.py so the package import does not load the module `-m` is about to run.
"""

import sys

from ..errors import UserError
from ..process import raise_on_sigterm
from ..stages import configure_process
from .worker import job_from_process, work


def main(argv: list[str]) -> int:
    configure_process()
    raise_on_sigterm()  # the runner passes a SIGTERM on: end the trial's run KILLED and queue it again
    try:
        work(job_from_process(argv[0]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        return getattr(err, "exit_code", 130)
    return 0


sys.exit(main(sys.argv[1:]))
