"""The service tier each endpoint serves each model at, learned from responses.

A request naming no tier (or ``auto``) is served at the project's tier, which the
client cannot know in advance: it may be ``default``, or ``priority`` if the project
is set up so. Reserving such a request at the model's dearest tier always holds, but
reserves several times what the call will cost (gpt-4o-mini: $0.0019 reserved for
$0.00046 spent), so a small budget refuses calls that would fit. Every response
names the tier that served it (``service_tier``), so after the first one the
reservation can use that tier: the dearest until a tier is seen, then the dearest
seen so far. The call itself is still settled at the tier its own response names.

What is learned only ever goes up (``default`` < ``scale`` < ``priority``) and is
never below ``default``: ``flex`` and ``batch`` are served only to requests that ask
for them, so they cannot be a project's default, and a cheaper answer never lowers
later reservations. A tier the price book does not rank teaches nothing.

What a reservation at a learned tier cannot do is bound a call the provider serves
at a dearer tier than any seen before (the project's default tier was raised): that
call costs more than it reserved. The ledger settles it at its true cost and, with
``on_exceed="raise"``, raises ``BudgetExceededError`` if the scope (or a spend limit)
is then over, so the cap still holds from the next call on. The overshoot is at most
the tier difference of the calls in flight when the tier changed, once. Learning off
(``WFLO_LEARN_SERVICE_TIER=false``, ``configure(learn_service_tier=False)``): every
tier-less request is reserved at the model's dearest tier, the strict cap.

Memory is bounded: ``max_entries`` (endpoint, model) pairs, the oldest learned
forgotten first; a forgotten pair is reserved at its dearest tier again.
"""

from __future__ import annotations

import threading

__all__ = ["TierMemory"]

_MAX_ENTRIES = 1024
# Tiers a project's requests may be served at when they name none, cheapest first.
_RANK = {"default": 0, "scale": 1, "priority": 2}
# Served only when a request asks for them: a response naming one says the project's tier is at least "default".
_REQUESTED_ONLY = frozenset({"flex", "batch"})


class TierMemory:
    """(endpoint, model) -> the tier the last response to a tier-less request named.

    Reads take no lock (a dict lookup is atomic); a change takes one, and a tier
    already known costs one lookup.
    """

    __slots__ = ("_tiers", "_lock", "_max", "learning")

    def __init__(self, max_entries: int = _MAX_ENTRIES, learning: bool = True) -> None:
        self._tiers: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._max = max(1, max_entries)
        self.learning = learning  # False: nothing is learned, every tier-less request is reserved at the dearest

    def tier(self, key: tuple[str, str] | None) -> str | None:
        """The tier learned for ``key``, None when none was (reserve at the dearest)."""
        if key is None:
            return None
        return self._tiers.get(key)

    def learn(self, key: tuple[str, str] | None, tier: object) -> None:
        """Raise what is known of ``key``'s tier to the one a response named (never lower it).

        ``flex``/``batch`` count as ``default``; a tier that is not a string or not
        ranked teaches nothing.
        """
        if not self.learning or key is None or type(tier) is not str:
            return
        tier = "default" if tier in _REQUESTED_ONLY else tier
        rank = _RANK.get(tier)
        if rank is None:
            return
        tiers = self._tiers
        known = tiers.get(key)
        if known is not None and _RANK[known] >= rank:
            return
        with self._lock:
            known = tiers.get(key)
            if known is not None and _RANK[known] >= rank:
                return
            if known is None and len(tiers) >= self._max:
                del tiers[next(iter(tiers))]  # the oldest learned (dicts keep insertion order)
            tiers[key] = tier

    def __len__(self) -> int:
        return len(self._tiers)
