"""The one error type the CLI turns into a single line: what is wrong and what to do."""


class CircuitlabError(Exception):
    """A problem with the user's input or files. The message is one line naming the problem and the fix."""
