"""MLflow's search language: `filter` strings and `order_by` clauses, parsed and applied to rows.

The grammar is MLflow's (see mlflow.utils.search_utils): clauses joined by AND, each
`<entity>.<key> <comparator> <value>`, e.g.
`metrics.accuracy > 0.9 and params.lr = '0.01' and attributes.status = 'RUNNING'`.
Entities: metrics (numeric comparisons on the run's latest value), params and tags
(=, !=, LIKE, ILIKE, IN, NOT IN on strings) and attributes (status, run_name, run_id,
user_id as strings; start_time, end_time as numbers). A key may be quoted with backticks
or double quotes (metrics.`val loss`). A row without the key never matches, as in MLflow.

Pure Python, no Django: the selectors evaluate parsed clauses on rows they read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.mlflow.errors import invalid

_ENTITY_ALIASES = {
    "metric": "metrics",
    "metrics": "metrics",
    "param": "params",
    "params": "params",
    "parameter": "params",
    "parameters": "params",
    "tag": "tags",
    "tags": "tags",
    "attribute": "attributes",
    "attributes": "attributes",
    "attr": "attributes",
    "run": "attributes",
    "dataset": "datasets",
    "datasets": "datasets",
}

_NUMERIC_OPS = ("=", "!=", ">", ">=", "<", "<=")
_STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")

# What each search may name: attribute -> "string" or "number".
RUN_ATTRIBUTES: dict[str, str] = {
    "status": "string",
    "run_name": "string",
    "run_id": "string",
    "user_id": "string",
    "artifact_uri": "string",
    "lifecycle_stage": "string",
    "start_time": "number",
    "end_time": "number",
    "created": "number",
}
# MLflow's other spellings of run attributes.
_RUN_ATTRIBUTE_ALIASES = {"run name": "run_name", "runname": "run_name", "Created": "created"}
EXPERIMENT_ATTRIBUTES: dict[str, str] = {
    "name": "string",
    "creation_time": "number",
    "last_update_time": "number",
    "experiment_id": "string",
}

_TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<lparen>\() | (?P<rparen>\)) | (?P<comma>,)
    | (?P<op>!=|>=|<=|=|>|<)
    | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<backtick>`[^`]*`)
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
    | (?P<word>[A-Za-z_][\w.]*)
    | (?P<dot>\.)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Clause:
    """One comparison: entity (metrics, params, tags, attributes), key, comparator, value."""

    entity: str
    key: str
    comparator: str
    value: Any  # float for numbers, str for strings, tuple[str, ...] for IN / NOT IN


@dataclass(frozen=True)
class OrderKey:
    """One order_by clause: entity, key, ascending."""

    entity: str
    key: str
    ascending: bool


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise invalid(f"filter: cannot parse {text[pos : pos + 30]!r} (at character {pos})")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


class _Parser:
    """Recursive descent over the tokens of one filter or order_by string."""

    def __init__(self, text: str, *, what: str) -> None:
        self.what = what
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise invalid(f"{self.what}: ended too early")
        self.pos += 1
        return token

    def peek_word(self, *words: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "word" and token[1].upper() in words

    def identifier(self) -> tuple[str, str]:
        """Return (entity, key) of `entity.key`, `entity.`quoted key`` or a bare attribute."""
        kind, raw = self.take()
        if kind in ("string", "backtick"):
            return "attributes", _unquote(raw)
        if kind != "word":
            raise invalid(f"{self.what}: expected a name like metrics.loss, got {raw!r}")
        if "." not in raw:
            # `params."a b"`: the entity is followed by a dot token and a quoted key.
            nxt = self.peek()
            if raw.lower() in _ENTITY_ALIASES and nxt is not None and nxt[0] == "dot":
                self.take()
                key_kind, key_raw = self.take()
                if key_kind not in ("string", "backtick", "word"):
                    raise invalid(f"{self.what}: expected a key after {raw}., got {key_raw!r}")
                key = key_raw if key_kind == "word" else _unquote(key_raw)
                return _ENTITY_ALIASES[raw.lower()], key
            return "attributes", raw
        entity, _, key = raw.partition(".")
        if entity.lower() not in _ENTITY_ALIASES:
            raise invalid(
                f"{self.what}: {entity!r} is not one of metrics, params, tags or attributes (in {raw!r})"
            )
        if not key:
            nxt_kind, nxt_raw = self.take()
            if nxt_kind not in ("string", "backtick"):
                raise invalid(f"{self.what}: expected a key after {raw!r}")
            key = _unquote(nxt_raw)
        return _ENTITY_ALIASES[entity.lower()], key

    def comparator(self) -> str:
        token = self.take()
        if token[0] == "op":
            return token[1]
        if token[0] == "word":
            word = token[1].upper()
            if word == "NOT":
                if not self.peek_word("IN"):
                    raise invalid(f"{self.what}: expected IN after NOT")
                self.take()
                return "NOT IN"
            if word in ("LIKE", "ILIKE", "IN"):
                return word
        raise invalid(
            f"{self.what}: expected a comparator (=, !=, >, >=, <, <=, LIKE, ILIKE, IN), got {token[1]!r}"
        )

    def value(self, comparator: str) -> Any:
        if comparator in ("IN", "NOT IN"):
            kind, raw = self.take()
            if kind != "lparen":
                raise invalid(f"{self.what}: {comparator} takes a list like ('a', 'b'), got {raw!r}")
            items: list[str] = []
            while True:
                kind, raw = self.take()
                if kind != "string":
                    raise invalid(f"{self.what}: {comparator} lists quoted strings, got {raw!r}")
                items.append(_unquote(raw))
                kind, raw = self.take()
                if kind == "rparen":
                    return tuple(items)
                if kind != "comma":
                    raise invalid(f"{self.what}: expected ',' or ')' in the {comparator} list, got {raw!r}")
        kind, raw = self.take()
        if kind == "string":
            return _unquote(raw)
        if kind == "number":
            return float(raw)
        raise invalid(f"{self.what}: expected a quoted string or a number, got {raw!r}")


def _check_clause(clause: Clause, attributes: Mapping[str, str]) -> Clause:
    entity, key, op, value = clause.entity, clause.key, clause.comparator, clause.value
    if entity == "datasets":
        raise invalid("filter: datasets are not recorded here; filter on metrics, params, tags or attributes")
    if entity == "attributes":
        key = _RUN_ATTRIBUTE_ALIASES.get(key, key)
        kind = attributes.get(key)
        if kind is None:
            raise invalid(f"filter: unknown attribute {key!r} (known: {', '.join(sorted(attributes))})")
    else:
        kind = "number" if entity == "metrics" else "string"
    allowed = _NUMERIC_OPS if kind == "number" else _STRING_OPS
    if op not in allowed:
        raise invalid(f"filter: {entity}.{key} takes {', '.join(allowed)}, not {op}")
    if kind == "number" and not isinstance(value, float):
        raise invalid(f"filter: {entity}.{key} is compared with a number, got {value!r}")
    if kind == "string" and isinstance(value, float):
        raise invalid(f"filter: {entity}.{key} is compared with a quoted string, got {value!r}")
    return Clause(entity, key, op, value)


def filter_parse(text: str | None, *, attributes: Mapping[str, str] = RUN_ATTRIBUTES) -> list[Clause]:
    """Return the clauses of a filter string (empty: match everything); raise INVALID_PARAMETER_VALUE."""
    if not text or not text.strip():
        return []
    parser = _Parser(text, what="filter")
    clauses: list[Clause] = []
    while True:
        entity, key = parser.identifier()
        op = parser.comparator()
        clauses.append(_check_clause(Clause(entity, key, op, parser.value(op)), attributes))
        if parser.peek() is None:
            return clauses
        if not parser.peek_word("AND"):
            _, raw = parser.take()
            word = raw.upper()
            hint = " (OR is not supported, as in MLflow)" if word == "OR" else ""
            raise invalid(f"filter: expected AND between clauses, got {raw!r}{hint}")
        parser.take()


def order_by_parse(
    items: Sequence[str] | None, *, attributes: Mapping[str, str] = RUN_ATTRIBUTES
) -> list[OrderKey]:
    """Return the order keys of order_by clauses like "metrics.loss ASC"; raise INVALID_PARAMETER_VALUE."""
    keys: list[OrderKey] = []
    for item in items or []:
        if not isinstance(item, str) or not item.strip():
            raise invalid(f"order_by: expected clauses like 'metrics.loss ASC', got {item!r}")
        parser = _Parser(item, what="order_by")
        entity, key = parser.identifier()
        ascending = True
        if parser.peek_word("ASC", "DESC"):
            ascending = parser.take()[1].upper() == "ASC"
        if parser.peek() is not None:
            raise invalid(f"order_by: unexpected {parser.take()[1]!r} in {item!r}")
        if entity == "attributes":
            key = _RUN_ATTRIBUTE_ALIASES.get(key, key)
            if key not in attributes:
                raise invalid(f"order_by: unknown attribute {key!r} (known: {', '.join(sorted(attributes))})")
        elif entity == "datasets":
            raise invalid("order_by: datasets are not recorded here")
        keys.append(OrderKey(entity, key, ascending))
    return keys


def _like(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if actual is None:
        return False
    if op in ("IN", "NOT IN"):
        return (str(actual) in expected) == (op == "IN")
    if op in ("LIKE", "ILIKE"):
        return _like(str(expected), ignore_case=op == "ILIKE").fullmatch(str(actual)) is not None
    if isinstance(expected, float):
        try:
            number = float(actual)
        except (TypeError, ValueError):
            return False
        if number != number:  # NaN matches no numeric comparison
            return False
        actual, expected = number, expected
    else:
        actual = str(actual)
    if op == "=":
        return bool(actual == expected)
    if op == "!=":
        return bool(actual != expected)
    if op == ">":
        return bool(actual > expected)
    if op == ">=":
        return bool(actual >= expected)
    if op == "<":
        return bool(actual < expected)
    return bool(actual <= expected)


Row = Mapping[
    str, Mapping[str, Any]
]  # {"attributes": {...}, "metrics": {...}, "params": {...}, "tags": {...}}


def row_matches(row: Row, clauses: Sequence[Clause]) -> bool:
    """Return True when the row meets every clause."""
    return all(_compare(row.get(c.entity, {}).get(c.key), c.comparator, c.value) for c in clauses)


def rows_sort(rows: list[Any], keys: Sequence[OrderKey], row_of: Callable[[Any], Row]) -> list[Any]:
    """Return rows sorted by the order keys (stable; missing values last, whatever the direction)."""
    out = list(rows)
    for key in reversed(keys):
        present = [r for r in out if row_of(r).get(key.entity, {}).get(key.key) is not None]
        absent = [r for r in out if row_of(r).get(key.entity, {}).get(key.key) is None]

        def sort_value(r: Any, key: OrderKey = key) -> Any:
            value = row_of(r)[key.entity][key.key]
            return (0, float(value), "") if isinstance(value, int | float) else (1, 0.0, str(value))

        present.sort(key=sort_value, reverse=not key.ascending)
        out = present + absent
    return out
