"""What Grafana does to a PostgreSQL panel's SQL before the database sees it, for the dashboard tests.

Two passes, in Grafana's order (no tests here; ``test_grafana_dashboard.py`` imports it):

1. **Template variables** (the browser, ``SqlDatasource.interpolateVariable``): ``$name``,
   ``${name}`` and ``[[name]]`` are replaced. A variable that is multi-value or has *Include All*
   is formatted as single-quoted SQL literals joined by commas (``'a','b'``, quotes doubled
   inside); a single-value one is inserted with its quotes doubled but unquoted. *All* with a
   custom ``allValue`` inserts that value **raw** (unformatted); *All* without one stands for every
   option. Built-ins such as ``$__interval`` become their text (``1h``); names that are neither
   (the macros) are left alone.
2. **Macros** (the server, ``pkg/tsdb/grafana-postgresql-datasource/macros.go``): every
   ``$__name(args)`` — arguments up to the first ``)``, split on commas and trimmed — becomes:

   ============================  ===========================================================
   ``$__time(c)``                ``c AS "time"``
   ``$__timeEpoch(c)``           ``extract(epoch from c) as "time"``
   ``$__timeFilter(c)``          ``c BETWEEN '<from>' AND '<to>'`` (UTC, RFC 3339, fraction trimmed)
   ``$__timeFrom()``             ``'<from>'`` (and ``$__timeTo()``)
   ``$__timeGroup(c, 1h)``       ``floor(extract(epoch from c)/3600)*3600``
   ``$__timeGroupAlias(c, 1h)``  the same ``AS "time"``
   ``$__unixEpochFilter(c)``     ``c >= <from s> AND c <= <to s>``
   ============================  ===========================================================

   The interval argument may be quoted; it is a Go duration or ``d``/``w``, and the seconds are
   printed as Go's ``%v`` prints a float (``3600``, ``86400``, ``1e+06``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

ALL = "$__all"
# Grafana's variable syntaxes: $name, [[name]] / [[name:format]], ${name} / ${name.field} / ${name:format}.
VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
# The PostgreSQL plugin's macro pattern: arguments stop at the first closing parenthesis.
MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class Variables:
    """The dashboard's template variables with a selection: name -> list of values, or ``ALL``."""

    definitions: dict[str, dict]
    selected: dict[str, list[str] | str] = field(default_factory=dict)
    options: dict[str, list[str]] = field(default_factory=dict)  # what "All" stands for without allValue
    builtins: dict[str, str] = field(default_factory=dict)  # $__interval and friends

    def format(self, name: str) -> str | None:
        if name in self.builtins:
            return self.builtins[name]
        definition = self.definitions.get(name)
        if definition is None:
            return None  # not a variable: Grafana leaves the text as it is (macros live on)
        value = self.selected.get(name, ALL)
        if value == ALL or value == [ALL]:
            if definition.get("allValue"):
                return definition["allValue"]
            value = self.options.get(name, [])
        multi = definition.get("multi") or definition.get("includeAll")
        if isinstance(value, str):
            value = [value]
        if multi or len(value) != 1:
            return ",".join(_quote_literal(v) for v in value)
        return value[0].replace("'", "''")


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate_variables(sql: str, variables: Variables) -> str:
    """Pass 1: what the browser sends."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        value = variables.format(name)
        return match.group(0) if value is None else value

    return VARIABLE.sub(replace, sql)


def rfc3339nano(moment: datetime) -> str:
    """Go's ``time.RFC3339Nano`` of a UTC time: fractional seconds without trailing zeros, ``Z``."""
    moment = moment.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_interval(text: str) -> float:
    """Seconds of a Grafana interval (``gtime.ParseInterval``): ``30s``, ``5m``, ``1h``, ``1d``, ``1w``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text.strip().strip("'"))
    if not match:
        raise ValueError(f"error parsing interval {text}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def go_float(value: float) -> str:
    """``fmt.Sprintf("%v", value)`` for a float64: shortest digits, exponent form from 1e+06 on."""
    digits_tuple = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    exponent = len(digits) + digits_tuple.exponent - 1
    if exponent < -4 or exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{'-' if digits_tuple.sign else ''}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"
    return format(Decimal(repr(value)).normalize(), "f")


def expand_macros(sql: str, time_from: datetime, time_to: datetime) -> str:
    """Pass 2: what the PostgreSQL plugin sends to the database."""

    def time_group(args: list[str]) -> str:
        seconds = go_float(parse_interval(args[1]))
        return f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"

    def evaluate(name: str, args: list[str]) -> str:
        start, end = rfc3339nano(time_from), rfc3339nano(time_to)
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{start}' AND '{end}'"
        if name == "__timeFrom":
            return f"'{start}'"
        if name == "__timeTo":
            return f"'{end}'"
        if name == "__timeGroup":
            return time_group(args)
        if name == "__timeGroupAlias":
            return time_group(args) + ' AS "time"'
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {int(time_from.timestamp())} AND {args[0]} <= {int(time_to.timestamp())}"
        raise ValueError(f"unknown macro {name!r}")

    def replace(match: re.Match) -> str:
        name = match.group(1)
        # Grafana < 5.3 compatibility, kept by the plugin: $__timeGroup(...) followed by ',' gets the alias.
        end = sql.find(match.group(0))
        if name == "__timeGroup" and end >= 0 and sql[end + len(match.group(0)) : end + len(match.group(0)) + 1] == ",":
            name = "__timeGroupAlias"
        return evaluate(name, [arg.strip() for arg in match.group(2).split(",")])

    return MACRO.sub(replace, sql)


def grafana_sql(sql: str, variables: Variables, time_from: datetime, time_to: datetime) -> str:
    """The SQL PostgreSQL receives from a panel: variables first (browser), then macros (server)."""
    return expand_macros(interpolate_variables(sql, variables), time_from, time_to)
