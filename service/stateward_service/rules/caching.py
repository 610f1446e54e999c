"""Task result caching: a completed result stored under a cache key serves later runs."""

from __future__ import annotations

from stateward.states import State, StateDetails, StateType
from stateward_service.rules.engine import (
    ALL_OR_NONE,
    CacheResult,
    Proceed,
    Reject,
    Rule,
    TransitionContext,
    Verdict,
)


class RetrieveCachedResults(Rule):
    """A task about to run whose cache key has an unexpired result does not run: it completes
    at once as Cached with that result (unless it asks to refresh the cache)."""

    FROM = ALL_OR_NONE
    TO = frozenset({StateType.RUNNING})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        details = ctx.proposed.details
        cached = ctx.cached
        if not details.cache_key or details.refresh_cache or cached is None:
            return None
        hit = State(
            StateType.COMPLETED,
            name="Cached",
            message=cached.message,
            details=StateDetails(
                cache_key=details.cache_key,
                cache_expiration=cached.details.cache_expiration,
                transition_id=details.transition_id,
            ),
            data=cached.data,
        )
        return Reject(hit, f"a cached result exists for key {details.cache_key!r}")


class CacheCompletedResults(Rule):
    """A task completing with a cache key stores its state under the key, until it expires."""

    FROM = ALL_OR_NONE
    TO = frozenset({StateType.COMPLETED})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        details = ctx.proposed.details
        if not details.cache_key:
            return None
        return Proceed(effects=(CacheResult(details.cache_key, details.cache_expiration),))
