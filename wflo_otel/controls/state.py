"""JSON validation of checkpoint states and approval contexts, before anything is written.

A state that does not serialise must fail with the path of the offending value
(``state['items'][2]['when']``), not with ``json``'s "Object of type datetime is not
JSON serializable" from somewhere inside a transaction. The value is checked and
converted to plain JSON types in one walk; nothing is written unless it passes.
"""

from __future__ import annotations

import math
from typing import Any

_SCALARS = (bool, type(None))
MAX_DEPTH = 100


def json_state(value: Any, root: str = "state") -> Any:
    """``value`` as plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Tuples become lists. Raises ``TypeError`` naming the key path of the first value that
    JSON cannot hold: an object of another type, a non-string key, NaN or infinity, a
    string (or key) with a NUL character or a lone surrogate, or a structure nested deeper
    than ``MAX_DEPTH`` (a cycle).
    """
    return _walk(value, root, 0)


def _walk(value: Any, path: str, depth: int) -> Any:
    if isinstance(value, str):
        return storable_text(value, path)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise TypeError(f"{path} is {value!r}, which JSON cannot hold")
        return float(value)
    if depth >= MAX_DEPTH:
        raise TypeError(f"{path} is nested deeper than {MAX_DEPTH} levels (a cycle?)")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a key {key!r} of type {type(key).__name__}; JSON keys are strings")
            storable_text(key, f"{path} key {key!r}")
            out[key] = _walk(item, f"{path}[{key!r}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_walk(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    raise TypeError(f"{path} is a {type(value).__qualname__}, which is not JSON-serialisable")


def storable_text(value: str, path: str) -> str:
    """A string both engines store: PostgreSQL's JSON refuses NUL (``\\u0000``) and lone surrogates."""
    if "\x00" in value:
        raise TypeError(f"{path} contains a NUL character, which the database cannot store")
    if value.isascii():  # the common case, without encoding a copy
        return str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError(f"{path} contains a lone surrogate, which is not valid Unicode") from None
    return str(value)
