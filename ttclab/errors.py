"""The one base class of errors caused by the user's input (a file, a key, a URI, a value).

The CLI turns a `UserError` into a one-line `error: ...` and exit code 2; every other exception is a
bug in ttclab and keeps its traceback. Raise a subclass where input is wrong, never a bare
KeyError/ValueError, so a real bug is never mistaken for a typo.
"""


class UserError(Exception):
    """Bad input; the message names the file/key and the fix."""
