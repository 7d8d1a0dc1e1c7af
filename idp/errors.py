"""Error classes that tell an activity whether retrying can help.

idp/ raises these; the activity layer turns them into Temporal failures (non-retryable for
PermanentError), so the domain code never needs to know about Temporal.
"""


class IdpError(Exception):
    """Base class. The message is one sentence a person can act on, and never holds a secret."""


class PermanentError(IdpError):
    """Retrying will not help: bad input, a 4xx answer, a resource we must not touch."""

    def __init__(self, message: str, *, reason: str = "PermanentError") -> None:
        super().__init__(message)
        self.reason = reason


class TransientError(IdpError):
    """Retrying later may help: 5xx, 429, timeouts, a lost race on a git push."""

    def __init__(self, message: str, *, reason: str = "TransientError") -> None:
        super().__init__(message)
        self.reason = reason
