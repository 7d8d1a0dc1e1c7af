"""Turning domain errors into Temporal failures: the one place retryability is decided."""

from collections.abc import Iterator
from contextlib import contextmanager

from temporalio.exceptions import ApplicationError

from idp.errors import PermanentError, TransientError


@contextmanager
def as_activity_errors() -> Iterator[None]:
    try:
        yield
    except PermanentError as error:
        raise ApplicationError(str(error), type=error.reason, non_retryable=True) from None
    except TransientError as error:
        raise ApplicationError(str(error), type=error.reason) from None
