"""The one backoff formula: launch retries, polls of a host that stopped answering, the settling
of a broken connection, and ticket renewals all wait by it."""

from __future__ import annotations


def backoff(attempt: int, initial: float, maximum: float, jitter: float = 0.0) -> float:
    """Seconds to wait after failed try ``attempt`` (1 for the first): ``initial * 2 **
    (attempt - 1)`` plus up to ``jitter`` at random, at most ``maximum`` (tenacity's
    ``wait_exponential_jitter``). Jitter keeps what failed together (a host or the KDC went down)
    from coming back in lock-step. Only tenacity's wait strategy is used: callers wait on a timer
    of their own, not in tenacity's blocking loop."""
    import tenacity

    wait = tenacity.wait_exponential_jitter(initial=initial, max=maximum, exp_base=2, jitter=jitter)
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempt)
    return float(wait(state))


def retry_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before launch attempt ``attempt + 1``, with up to ``initial`` of jitter."""
    return backoff(attempt, initial, maximum, jitter=initial)
