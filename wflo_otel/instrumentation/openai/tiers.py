"""The service tier each endpoint serves each model at, learned from responses.

A request naming no tier (or ``auto``) is served at the project's tier, which the
client cannot know in advance: it may be ``default``, or ``priority`` if the project
is set up so. Reserving such a request at the model's dearest tier always holds, but
reserves several times what the call will cost (gpt-4o-mini: $0.0019 reserved for
$0.00046 spent), so a small budget refuses calls that would fit. Every response
names the tier that served it (``service_tier``), so after the first one the
reservation can use that tier: the dearest until a tier is seen, then the one last
seen. The call itself is still settled at the tier its own response names, and a
response naming another tier replaces what was learned, so the next reservation
follows it.

What a reservation at a learned tier cannot do is bound a call the provider serves
at a dearer tier than it did last time: that call costs more than it reserved. The
ledger settles it at its true cost and, with ``on_exceed="raise"``, raises
``BudgetExceededError`` if the scope is then over budget, so the cap still holds
from the next call on (the overshoot is at most the tier difference of the calls
in flight when the tier changed).

Memory is bounded: ``max_entries`` (endpoint, model) pairs, the oldest learned
forgotten first; a forgotten pair is reserved at its dearest tier again.
"""

from __future__ import annotations

import threading

__all__ = ["TierMemory"]

_MAX_ENTRIES = 1024


class TierMemory:
    """(endpoint, model) -> the tier the last response to a tier-less request named.

    Reads take no lock (a dict lookup is atomic); a change takes one, and a tier
    already known costs one lookup.
    """

    __slots__ = ("_tiers", "_lock", "_max")

    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self._tiers: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._max = max(1, max_entries)

    def tier(self, key: tuple[str, str] | None) -> str | None:
        """The tier learned for ``key``, None when none was (reserve at the dearest)."""
        if key is None:
            return None
        return self._tiers.get(key)

    def learn(self, key: tuple[str, str] | None, tier: object) -> None:
        """Remember the tier a response named; a non-string or empty tier teaches nothing."""
        if key is None or type(tier) is not str or not tier or tier == "auto":
            return
        tiers = self._tiers
        if tiers.get(key) == tier:
            return
        with self._lock:
            if key not in tiers and len(tiers) >= self._max:
                del tiers[next(iter(tiers))]  # the oldest learned (dicts keep insertion order)
            tiers[key] = tier

    def __len__(self) -> int:
        return len(self._tiers)
