"""Turning domain errors into Temporal failures: the one place retryability is decided.

It is also where the worker log learns which failures are expected: a failure classified here
(an ApplicationError with a type, the reason) is one log line, while the SDK's traceback is kept
for everything else, the errors nobody anticipated.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from temporalio.exceptions import ApplicationError

from idp.errors import PermanentError, TransientError

# The logger the SDK's activity worker reports "Completing activity as failed" on, and the tag
# it puts on that record.
SDK_ACTIVITY_LOGGER = "temporalio.activity"
_SDK_FAILURE_TAG = "__temporal_error_identifier"


@contextmanager
def as_activity_errors() -> Iterator[None]:
    try:
        yield
    except PermanentError as error:
        raise ApplicationError(str(error), type=error.reason, non_retryable=True) from None
    except TransientError as error:
        raise ApplicationError(str(error), type=error.reason) from None


class ClassifiedFailuresOnOneLine(logging.Filter):
    """Rewrites the SDK's record of a failed attempt whose error carries a reason into one line
    with the activity, the workflow, the attempt, the reason and the sentence, without the
    traceback: for an expected failure (an unknown Synadia account, a refused token) the
    traceback only shows our own raise, once per attempt, and buries the sentence operators
    need. Other records, unexpected errors among them, pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SDK_FAILURE_TAG, None) != "ActivityFailure":
            return True
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, ApplicationError) or not error.type:
            return True
        details = getattr(record, "temporal_activity", None) or {}
        record.msg = "activity %s failed for %s (attempt %s): %s: %s"
        record.args = (
            details.get("activity_type", "?"),
            details.get("workflow_id", "?"),
            details.get("attempt", "?"),
            error.type,
            error.message,
        )
        record.exc_info = None
        record.exc_text = None
        return True


_FILTER = ClassifiedFailuresOnOneLine()


def log_classified_failures_on_one_line() -> None:
    """Install the filter on the SDK's activity logger; installing it again changes nothing."""
    logging.getLogger(SDK_ACTIVITY_LOGGER).addFilter(_FILTER)
