"""Just enough PromQL to say which series a query reads: metric names, their label matchers,
and the labels it groups by. A tokenizer, not a parser: it does not check the grammar
(promtool does, in tests/test_grafana.py, where it is installed)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+)           # Grafana's $__rate_interval, ${tenant}...
    | (?P<number>[0-9][\w.]*|\.[0-9][\w.]*)     # 0.95, 1e3, 5m: never a name
    | (?P<ident>[a-zA-Z_:][\w:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.VERBOSE,
)
#: Keywords followed by a list of label names: ``sum by (le) (...)``, ``on (job)``...
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
#: Words that are neither a function (those are followed by ``(``) nor a metric name.
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
#: Aggregations may put their grouping first: ``sum by (le) (...)``.
AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)

_NOT_NAMES = KEYWORDS | AGGREGATIONS | GROUPING  # ``group_left`` may come without a list


@dataclass(frozen=True)
class Selector:
    name: str
    #: (label, operator, value), the value unquoted
    matchers: tuple[tuple[str, str, str], ...] = ()


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) pairs, spaces dropped; anything that is no PromQL token is an error."""
    found, at = [], 0
    while at < len(expr):
        match = _TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"unexpected {expr[at : at + 10]!r} at {at} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((kind, match.group()))
        at = match.end()
    return found


def _closing(toks: list[tuple[str, str]], start: int, close: str) -> int:
    """The index of the token that closes the bracket opened at ``start``."""
    for at in range(start + 1, len(toks)):
        if toks[at][1] == close:
            return at
    raise ValueError(f"unclosed {toks[start][1]!r}")


def _matchers(toks: list[tuple[str, str]]) -> tuple[tuple[str, str, str], ...]:
    """``label op "value"`` triples between ``{`` and ``}``."""
    parts = [t for t in toks if t[1] != ","]
    if len(parts) % 3:
        raise ValueError(f"cannot read label matchers {[t[1] for t in toks]}")
    triples = []
    for label, op, value in zip(parts[::3], parts[1::3], parts[2::3], strict=True):
        if label[0] != "ident" or op[0] != "op" or value[0] != "string":
            raise ValueError(f"not a label matcher: {label[1]}{op[1]}{value[1]}")
        triples.append((label[1], op[1], value[1][1:-1]))
    return tuple(triples)


def parse(expr: str) -> Query:
    """The series ``expr`` selects and the labels it groups or matches on."""
    toks, query, at = tokens(expr), Query(), 0
    while at < len(toks):
        kind, text = toks[at]
        following = toks[at + 1][1] if at + 1 < len(toks) else ""
        if text == "[":  # a range or subquery: durations and Grafana variables only
            at = _closing(toks, at, "]")
        elif kind == "ident" and text in GROUPING and following == "(":
            end = _closing(toks, at + 1, ")")
            query.grouping |= {t for k, t in toks[at + 2 : end] if k == "ident"}
            at = end
        elif kind == "ident" and (following == "(" or text in _NOT_NAMES):
            pass  # a function or an aggregation; its arguments come next
        elif kind == "ident":
            matchers: tuple[tuple[str, str, str], ...] = ()
            if following == "{":
                end = _closing(toks, at + 1, "}")
                matchers, at = _matchers(toks[at + 2 : end]), end
            query.selectors.append(Selector(text, matchers))
        elif text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        at += 1
    return query
