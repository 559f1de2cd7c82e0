"""The one exception type for errors a user can cause (bad file, bad sentence, wrong checkpoint).

The CLI prints ``error: <message>`` and exits with status 2; the app shows the message. Anything else
that escapes is a bug in scan-viz, not in the user's input.
"""


class ScanVizError(Exception):
    """A user-facing error. Its message is one line that says what went wrong and what to do."""


def run_command(func, *args) -> int:
    """Run a command-line action: a user error becomes one ``error:`` line on stderr and exit status 2."""
    import sys

    try:
        return func(*args)
    except ScanVizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
