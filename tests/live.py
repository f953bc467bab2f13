"""What tests against live processes share: waiting, with a deadline, for something to happen."""

import time

import pytest


def wait_until(predicate, timeout, what, interval=0.1):
    """Call ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass (the test fails
    saying ``what`` it waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(interval)
