"""What a decision must say, checked once for every way of deciding (Python, CLI, HTTP).

The CLI and the HTTP routes used to check ``by`` and the reason each their own way, so a
name of spaces or zero-width characters passed one and not the other. A decision names
who made it (``by``: something visible once whitespace and invisible characters are set
aside) and a rejection says why (``reason``, likewise); a comment is optional text.
"""

from __future__ import annotations

import unicodedata
from typing import Any

_VISIBLE = frozenset("LNPS")  # letters, numbers, punctuation, symbols (not spaces, controls, format chars)


def visible(text: str) -> str:
    """``text`` without leading and trailing whitespace or invisible characters (zero-width, controls)."""
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start])[0] not in _VISIBLE:
        start += 1
    while end > start and unicodedata.category(text[end - 1])[0] not in _VISIBLE:
        end -= 1
    return text[start:end]


def check_decision(by: Any, reason: Any, *, approved: bool) -> tuple[str, str | None]:
    """``(by, reason)`` cleaned, or ``ValueError`` saying what is missing.

    ``by`` must be text with a visible character; a rejection's ``reason`` too; an
    approval's comment (passed as ``reason``) may be None or any text.
    """
    by = decider(by)
    if reason is not None and not isinstance(reason, str):
        raise ValueError("the comment / reason of a decision must be text")
    if not approved and (reason is None or not visible(reason)):
        raise ValueError("a rejection needs a non-blank reason")
    return by, reason


def decider(by: Any) -> str:
    """Who decided, cleaned; ``ValueError`` when it is not text with a visible character."""
    if not isinstance(by, str) or not visible(by):
        raise ValueError("a decision needs who made it: a non-blank name (by)")
    return visible(by)
