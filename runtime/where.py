"""`--where`: a row filter on the source table that can never become arbitrary SQL.

The rule (documented in `marketpulse score --help`): the filter is one boolean
expression over the source table's own columns, built from

    column names, literals, = <> < > <= >=, IS [NOT] DISTINCT FROM, AND OR NOT,
    IN (...), BETWEEN, [NOT] LIKE / ILIKE, IS [NOT] NULL, + - * / %, COALESCE,
    CAST / TRY_CAST / typed literals (DATE '2024-01-01'), and the functions in
    `FUNCTIONS` below;

nothing else: no subqueries, no other tables, no `;`, no LIMIT/ORDER BY, no
parameters, no table-qualified names. DuckDB's own parser turns the text into a
syntax tree (`json_serialize_sql`), the tree is checked against that list, and the
SQL is rebuilt from the tree: column names re-quoted, every literal sent as a bound
parameter. User text therefore never reaches the SQL that runs.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation

from marketpulse.errors import MarketpulseError
from marketpulse.sql import quote_ident

FUNCTIONS = frozenset(
    {
        "lower", "upper", "length", "strlen", "trim", "ltrim", "rtrim", "starts_with",
        "ends_with", "suffix", "prefix", "contains", "regexp_matches", "abs", "round",
        "floor", "ceil", "date_trunc", "date_part", "year", "month", "day", "hour",
        "dayofweek", "epoch", "today", "current_date", "len",
    }
)  # fmt: skip
_INFIX_FUNCTIONS = {
    "~~": "LIKE",
    "!~~": "NOT LIKE",
    "~~*": "ILIKE",
    "!~~*": "NOT ILIKE",
    "+": "+",
    "-": "-",
    "*": "*",
    "/": "/",
    "//": "//",
    "%": "%",
}
_COMPARISONS = {
    "COMPARE_EQUAL": "=",
    "COMPARE_NOTEQUAL": "<>",
    "COMPARE_LESSTHAN": "<",
    "COMPARE_GREATERTHAN": ">",
    "COMPARE_LESSTHANOREQUALTO": "<=",
    "COMPARE_GREATERTHANOREQUALTO": ">=",
    "COMPARE_DISTINCT_FROM": "IS DISTINCT FROM",
    "COMPARE_NOT_DISTINCT_FROM": "IS NOT DISTINCT FROM",
}
_CAST_TYPES = frozenset(
    {
        "DATE", "TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE", "TIME", "INTERVAL",
        "INTEGER", "INT", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER",
        "DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC", "VARCHAR", "TEXT", "BOOLEAN", "UUID",
    }
)  # fmt: skip
_HINT = (
    "use comparisons, AND/OR/NOT, IN, BETWEEN, LIKE, IS NULL, casts and simple "
    "functions on the table's own columns"
)


def compile_where(con, expr: str, columns: list[str], alias: str = "s") -> tuple[str, list]:
    """Return (SQL fragment, parameters) for `expr`, or raise a one-line MarketpulseError."""
    if not expr or not expr.strip():
        return "TRUE", []
    statement = "SELECT * FROM t WHERE " + expr
    raw = con.execute("SELECT json_serialize_sql(?)", [statement]).fetchall()[0][0]
    tree = json.loads(raw)
    if tree.get("error"):
        message = tree.get("error_message", "cannot parse")
        if "Only SELECT" in message:
            message = "it must be a single expression (no ';' or other statements)"
        raise MarketpulseError(f"--where {expr!r} is not a valid filter ({message}); {_HINT}")
    statements = tree["statements"]
    node = statements[0]["node"] if len(statements) == 1 else {}
    clean = (
        node.get("type") == "SELECT_NODE"
        and not node.get("modifiers")
        and not node.get("cte_map", {}).get("map")
        and not node.get("group_expressions")
        and node.get("having") is None
        and node.get("qualify") is None
        and node.get("sample") is None
        and node.get("where_clause") is not None
    )
    if not clean:
        raise MarketpulseError(
            f"--where {expr!r} must be a single filter expression (no ';', LIMIT, ORDER BY, "
            f"GROUP BY or UNION); {_HINT}"
        )
    compiler = _Compiler(expr, columns, alias)
    return compiler.render(node["where_clause"]), compiler.params


class _Compiler:
    def __init__(self, expr: str, columns: list[str], alias: str):
        self.expr = expr
        self.columns = {c.lower(): c for c in columns}
        self.alias = alias
        self.params: list = []

    def reject(self, what: str):
        raise MarketpulseError(f"--where {self.expr!r} uses {what}, which is not allowed; {_HINT}")

    def render(self, node: dict) -> str:
        cls, kind = node.get("class"), node.get("type")
        if cls == "COLUMN_REF":
            names = node["column_names"]
            if len(names) != 1:
                self.reject(f"the qualified name {'.'.join(names)}")
            column = self.columns.get(names[0].lower())
            if column is None:
                raise MarketpulseError(
                    f"--where refers to column {names[0]!r}, which the source table lacks "
                    f"(columns: {', '.join(self.columns.values())}); fix the filter"
                )
            return f"{self.alias}.{quote_ident(column)}"
        if cls == "CONSTANT":
            return self.constant(node["literal"])
        if cls == "COMPARISON" and kind in _COMPARISONS:
            return (
                f"({self.render(node['left'])} {_COMPARISONS[kind]} {self.render(node['right'])})"
            )
        if cls == "CONJUNCTION" and kind in ("CONJUNCTION_AND", "CONJUNCTION_OR"):
            joiner = " AND " if kind == "CONJUNCTION_AND" else " OR "
            return "(" + joiner.join(self.render(c) for c in node["children"]) + ")"
        if cls == "BETWEEN":
            parts = (self.render(node[k]) for k in ("input", "lower", "upper"))
            return "({} BETWEEN {} AND {})".format(*parts)
        if cls == "OPERATOR":
            return self.operator(kind, node["children"])
        if cls == "CAST":
            return self.cast(node)
        if cls == "FUNCTION":
            return self.function(node)
        self.reject(f"a {str(cls or kind).lower()} expression")

    def constant(self, literal: dict) -> str:
        kind, text = literal.get("kind"), literal.get("text")
        if kind == "NULL" or text is None:
            return "NULL"
        if kind == "BOOLEAN":
            self.params.append(text.lower() == "true")
        elif kind in ("INTEGER", "BIGINT", "HUGEINT"):
            self.params.append(int(text))
        elif kind in ("NUMERIC", "DECIMAL"):
            try:
                self.params.append(Decimal(text))
            except InvalidOperation:  # DuckDB's parser takes "0E" for a number; Python not
                self.reject(f"the number {text!r}")
        elif kind in ("DOUBLE", "FLOAT"):
            self.params.append(float(text))
        elif kind in ("STRING", "VARCHAR"):
            self.params.append(text)
        else:
            self.reject(f"a {kind} literal")
        return "?"

    def operator(self, kind: str, children: list[dict]) -> str:
        args = [self.render(c) for c in children]
        if kind == "OPERATOR_NOT" and len(args) == 1:
            return f"(NOT {args[0]})"
        if kind == "OPERATOR_IS_NULL" and len(args) == 1:
            return f"({args[0]} IS NULL)"
        if kind == "OPERATOR_IS_NOT_NULL" and len(args) == 1:
            return f"({args[0]} IS NOT NULL)"
        if kind in ("COMPARE_IN", "COMPARE_NOT_IN") and len(args) >= 2:
            neg = " NOT" if kind == "COMPARE_NOT_IN" else ""
            return f"({args[0]}{neg} IN ({', '.join(args[1:])}))"
        if kind == "OPERATOR_COALESCE":
            return f"COALESCE({', '.join(args)})"
        self.reject(f"the operator {kind}")

    def cast(self, node: dict) -> str:
        type_expr = node.get("type_expr") or {}
        name = str(type_expr.get("type_name", "")).upper()
        if name not in _CAST_TYPES or type_expr.get("children"):
            self.reject(f"a cast to {name or '?'}")
        func = "TRY_CAST" if node.get("try_cast") else "CAST"
        return f"{func}({self.render(node['child'])} AS {name})"

    def function(self, node: dict) -> str:
        name = str(node.get("function_name", "")).lower()
        if node.get("distinct") or node.get("filter") or node.get("schema"):
            self.reject(f"the function call {name}")
        if (node.get("order_bys") or {}).get("orders"):
            self.reject(f"ORDER BY inside {name}")
        args = [self.render(a["expression"]) for a in node.get("arguments", [])]
        if any(a.get("name") for a in node.get("arguments", [])):
            self.reject(f"named arguments in {name}")
        if node.get("is_operator") and name in _INFIX_FUNCTIONS:
            op = _INFIX_FUNCTIONS[name]
            if len(args) == 1 and name == "-":
                return f"(-{args[0]})"
            if len(args) == 2:
                return f"({args[0]} {op} {args[1]})"
        if not node.get("is_operator") and name in FUNCTIONS:
            return f"{name}({', '.join(args)})"
        self.reject(f"the function {name}")
