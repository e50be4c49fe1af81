"""`--where` expressions: a small, safe language that selects rows of metadata tables.

    cre_line == "Sst-IRES-Cre" and session_type.startswith("OPHYS_1")
    project_code not in ["VisualBehavior", "VisualBehaviorTask1B"]
    not (equipment_name == "MESO.1") or age_in_days >= 120.5
    "Sst-IRES-Cre" in driver_line          (an element of a list column)

The text is tokenized and parsed by hand, here: it never reaches Python's evaluator or its
parser, so an expression can do nothing but read the columns it names. The grammar
(keywords are lowercase; True/False/None are accepted for true/false/null):

    expr      := or END
    or        := and ("or" and)*
    and       := not ("and" not)*
    not       := "not"* atom
    atom      := "(" or ")" | NAME "." METHOD "(" STRING ")" | operand [tail]
    tail      := CMP operand | ["not"] "in" operand | "is" ["not"] "null"
    operand   := NAME | literal | "[" [literal ("," literal)* [","]] "]"
    literal   := STRING | NUMBER | "true" | "false" | "null"
    CMP       := "==" | "!=" | "<" | "<=" | ">" | ">="     METHOD := startswith | endswith | contains

A comparison has a column on one side and a value on the other (`200 < x` means `x > 200`);
`value in column` tests membership in a list column (or in a string column holding a Python
list literal, where the element must appear quoted); a bare column must be boolean, and a bare
`true`/`false` selects every/no row. A string compared with a timestamp or date column is
parsed as ISO 8601 ("2019-06-01", "2019-06-01 14:30:00+00:00"); a literal without a zone
means UTC against a zoned column, and a zoned literal is converted to UTC against a naive one.

Nulls follow SQL: a comparison, `in`, or method on a null value is null (unknown), `and`/`or`
use three-valued (Kleene) logic, `not null` is null, and only rows whose final value is true
are selected. So on a row where x is null, neither `x == 1` nor `not (x == 1)` selects it
(nor `x in [...]`, nor `x not in [...]`); `x is null` does, and `x == 1 or true` does.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:  # pyarrow is imported where it is used: `vbo-mirror --help` stays fast
    import pyarrow as pa

__all__ = ["Expr", "SelectError", "UnknownColumn", "evaluate", "parse"]

MAX_LENGTH = 10_000  # characters in an expression
MAX_DEPTH = 100  # nested parentheses plus `not`s
MAX_NAME = 200  # characters in a column name
METHODS = ("startswith", "endswith", "contains")
_CMP = ("==", "!=", "<", "<=", ">", ">=")
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_KEYWORDS = {"and": "and", "or": "or", "not": "not", "in": "in", "is": "is", "null": "null", "true": "true",
             "false": "false", "True": "true", "False": "false", "None": "null"}
_LITERALS = {"true": True, "false": False, "null": None}
_MAX_INT64 = (1 << 63) - 1


class SelectError(InputError):
    """A bad expression or id list. With `text`, the message points at the place (`pos`)."""

    column: str | None = None

    def __init__(self, problem: str, *, text: str | None = None, pos: int = 0, hint: str | None = None) -> None:
        message = problem if text is None else f"{problem} (at column {pos + 1})\n{_point(text, pos)}"
        super().__init__(message, hint=hint)
        self.problem, self.text, self.pos = problem, text, pos


class UnknownColumn(SelectError):
    """The expression names a column the table does not have (a caller may try another table)."""

    def __init__(self, column: str, problem: str, *, text: str, pos: int) -> None:
        super().__init__(problem, text=text, pos=pos)
        self.column = column


def _point(text: str, pos: int, width: int = 72) -> str:
    """The expression (a window of it, if long) and a caret line under `pos`."""
    start = max(0, min(pos - width // 2, len(text) - width))
    end = min(len(text), start + width)
    lead, tail = ("..." if start else ""), ("..." if end < len(text) else "")
    shown = re.sub(r"\s", " ", text[start:end])  # tabs and newlines would shift the caret
    return f"    {lead}{shown}{tail}\n    {' ' * (len(lead) + pos - start)}^"


# --- tokens -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tok:
    kind: str  # name kw str num op end, or the punctuation itself: ( ) [ ] , .
    value: Any
    pos: int


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_SPACE = re.compile(r"\s+")
# Operators people bring from other languages, and what to write instead.
_WRONG_OPS = {"&&": "and", "||": "or", "<>": "!=", "=": "==", "&": "and", "|": "or", "!": "not"}


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(text)
    while True:
        if (m := _SPACE.match(text, i)):
            i = m.end()
        if i >= n:
            out.append(_Tok("end", None, n))
            return out
        ch, two = text[i], text[i:i + 2]
        if ch in "\"'":
            value, end = _string(text, i)
            out.append(_Tok("str", value, i))
            i = end
        elif two in ("==", "!=", "<=", ">="):
            out.append(_Tok("op", two, i))
            i += 2
        elif two in _WRONG_OPS or ch in _WRONG_OPS:
            bad = two if two in _WRONG_OPS else ch
            raise SelectError(f"'{bad}' is not an operator here; did you mean '{_WRONG_OPS[bad]}'?", text=text, pos=i)
        elif ch in "<>":
            out.append(_Tok("op", ch, i))
            i += 1
        elif ch in "()[],.":
            out.append(_Tok(ch, ch, i))
            i += 1
        elif (m := _NUMBER.match(text, i)):
            if m.end() < n and (text[m.end()].isalnum() or text[m.end()] in "_."):
                raise SelectError("malformed number", text=text, pos=i)
            value = float(m.group()) if (m.group(1) or m.group(2)) else int(m.group())
            if isinstance(value, int) and abs(value) > _MAX_INT64:
                raise SelectError("integer too large (beyond 64 bits)", text=text, pos=i)
            out.append(_Tok("num", value, i))
            i = m.end()
        elif (m := _NAME.match(text, i)):
            word = m.group()
            if len(word) > MAX_NAME:
                raise SelectError(f"a name of {len(word)} characters is too long (the limit is {MAX_NAME})",
                                  text=text, pos=i)
            out.append(_Tok("kw", _KEYWORDS[word], i) if word in _KEYWORDS else _Tok("name", word, i))
            i = m.end()
        elif ch == "-":
            raise SelectError("unexpected '-': expressions have no arithmetic", text=text, pos=i,
                              hint="a text value goes in quotes: cre_line == \"Sst-IRES-Cre\"")
        else:
            raise SelectError(f"unexpected character {ch!r}", text=text, pos=i)


def _string(text: str, start: int) -> tuple[str, int]:
    """The string literal opening at `start` and the index after it; \\ escapes \\, ' and "."""
    quote, chars, i = text[start], [], start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(chars), i + 1
        if ch == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "\\'\"":
                raise SelectError("unsupported escape in a string: only \\\\, \\' and \\\" are escapes",
                                  text=text, pos=i)
            i += 1
            ch = text[i]
        chars.append(ch)
        i += 1
    raise SelectError(f"unterminated string: no closing {quote} for the one opened here", text=text, pos=start)


def _describe(tok: _Tok) -> str:
    if tok.kind == "end":
        return "the end of the expression"
    if tok.kind == "str":
        return f"string {_show(tok.value if len(tok.value) <= 30 else tok.value[:27] + '...')}"
    if tok.kind == "num":
        return f"number {tok.value}"
    if tok.kind == "name":
        return f"name '{tok.value}'"
    return f"'{tok.value}'"


# --- the parsed tree ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Bool:
    op: str  # "and" | "or"
    items: tuple


@dataclass(frozen=True)
class _Not:
    item: Any


@dataclass(frozen=True)
class _Const:
    value: bool


@dataclass(frozen=True)
class _Test:
    """One condition on one column. `op` is a CMP, "in"/"not in" (column in a list of values),
    "has"/"not has" (value in a list column), "is null"/"is not null", a METHOD, or "truth"
    (a bare boolean column). `pos` is where the column is named, `at` where the operator is."""

    column: str
    op: str
    value: Any
    pos: int
    at: int


@dataclass(frozen=True)
class _Operand:
    kind: str  # "column" | "literal" | "list"
    value: Any
    pos: int


@dataclass(frozen=True)
class Expr:
    """A parsed expression; immutable. Build it with `parse`, run it with `evaluate`."""

    text: str
    _root: Any = field(repr=False, compare=False, default=None)

    def columns(self) -> frozenset[str]:
        """Every column name the expression refers to."""
        return frozenset(name for name, _ in _column_refs(self._root))


def _column_refs(node: Any) -> list[tuple[str, int]]:
    """(name, position) of every column, in the order they appear in the text."""
    out, stack = [], [node]
    while stack:
        node = stack.pop()
        if isinstance(node, _Bool):
            stack.extend(reversed(node.items))
        elif isinstance(node, _Not):
            stack.append(node.item)
        elif isinstance(node, _Test):
            out.append((node.column, node.pos))
    return out


# --- the parser: one method per grammar rule ----------------------------------------------

def parse(text: str) -> Expr:
    """Parse a `--where` expression; a syntax error raises SelectError pointing at the place."""
    if len(text) > MAX_LENGTH:
        raise SelectError(f"the expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    try:
        return Expr(text, _Parser(text).parse())
    except RecursionError:  # the depth limit should come first; never let this escape
        raise SelectError("the expression is nested too deeply", text=text, pos=0) from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i, self.depth = text, _tokens(text), 0, 0

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def is_kw(self, word: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "kw" and tok.value == word

    def fail(self, problem: str, pos: int, hint: str | None = None):
        raise SelectError(problem, text=self.text, pos=pos, hint=hint)

    def expect(self, kind: str, what: str) -> _Tok:
        tok = self.take()
        if tok.kind != kind:
            self.fail(f"expected {what}, found {_describe(tok)}", tok.pos)
        return tok

    def nest(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"the expression is nested more than {MAX_DEPTH} levels deep", tok.pos)

    def parse(self) -> Any:
        if self.peek().kind == "end":
            self.fail("empty expression", 0, hint='write a condition such as cre_line == "Sst-IRES-Cre"')
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            if tok.kind == "name" and tok.value.lower() in ("and", "or", "not", "in", "is"):
                self.fail(f"'{tok.value}': keywords are lowercase; did you mean '{tok.value.lower()}'?", tok.pos)
            if tok.kind == ")":
                self.fail("unbalanced ')': nothing to close", tok.pos)
            self.fail(f"unexpected {_describe(tok)} after a complete condition; "
                      "join conditions with 'and' or 'or'", tok.pos)
        return node

    def or_(self) -> Any:
        return self.chain("or", self.and_)

    def and_(self) -> Any:
        return self.chain("and", self.not_)

    def chain(self, word: str, operand) -> Any:
        """`operand (word operand)*`, flattened into one _Bool (no depth for long chains)."""
        items = [operand()]
        while self.is_kw(word):
            self.take()
            items.append(operand())
        return items[0] if len(items) == 1 else _Bool(word, tuple(items))

    def not_(self) -> Any:
        count, saved = 0, self.depth
        while self.is_kw("not"):
            self.nest(self.take())
            count += 1
        node = self.atom()
        self.depth = saved
        for _ in range(count):
            node = _Not(node)
        return node

    def atom(self) -> Any:
        tok = self.peek()
        if tok.kind == "(":
            self.take()
            self.nest(tok)
            node = self.or_()
            self.expect(")", f"')' to close the '(' at column {tok.pos + 1}")
            self.depth -= 1
            return node
        left = self.operand()
        nxt = self.peek()
        if nxt.kind == ".":
            return self.method(left)
        if nxt.kind == "op":
            self.take()
            return self.compare(left, nxt, self.operand())
        if self.is_kw("in") or (self.is_kw("not") and self.is_kw("in", 1)):
            negate = self.take().value == "not"
            if negate:
                self.take()
            return self.membership(left, nxt, self.operand(), negate)
        if self.is_kw("is"):
            self.take()
            negate = self.is_kw("not") and bool(self.take())
            end = self.take()
            if not (end.kind == "kw" and end.value == "null"):
                hint = "; keywords are lowercase: 'null'" if end.kind == "name" and end.value.lower() == "null" else ""
                self.fail(f"expected 'null' after '{'is not' if negate else 'is'}', found {_describe(end)}{hint}",
                          end.pos)
            if left.kind != "column":
                self.fail("'is null' needs a column on its left", left.pos)
            return _Test(left.value, "is not null" if negate else "is null", None, left.pos, nxt.pos)
        # A bare operand: a boolean column, or true/false.
        if left.kind == "column":
            return _Test(left.value, "truth", None, left.pos, left.pos)
        if left.kind == "literal" and isinstance(left.value, bool):
            return _Const(left.value)
        self.fail("a value alone is not a condition; compare a column with it, e.g. column == value", left.pos)

    def operand(self) -> _Operand:
        tok = self.take()
        if tok.kind == "name":
            return _Operand("column", tok.value, tok.pos)
        if tok.kind in ("str", "num"):
            return _Operand("literal", tok.value, tok.pos)
        if tok.kind == "kw" and tok.value in _LITERALS:
            return _Operand("literal", _LITERALS[tok.value], tok.pos)
        if tok.kind == "[":
            return _Operand("list", self.list_items(), tok.pos)
        if tok.kind == "end":
            self.fail("the expression ends too early: expected a column name or a value", tok.pos)
        self.fail(f"expected a column name or a value, found {_describe(tok)}", tok.pos)

    def list_items(self) -> tuple:
        values: list = []
        first_kind = None
        while self.peek().kind != "]":
            tok = self.take()
            if tok.kind == "kw" and tok.value == "null":
                self.fail("a list cannot hold null; write (x is null or x in [...])", tok.pos)
            if tok.kind == "kw" and tok.value in _LITERALS:
                value = _LITERALS[tok.value]
            elif tok.kind in ("str", "num"):
                value = tok.value
            elif tok.kind == "name":
                self.fail(f"a list holds values, not column names: quote it if you mean the string "
                          f"\"{tok.value}\"", tok.pos)
            else:
                self.fail(f"expected a value or ']' in the list, found {_describe(tok)}", tok.pos)
            kind = _value_kind(value)
            if first_kind is None:
                first_kind = kind
            elif kind != first_kind:
                self.fail(f"the list mixes {first_kind}s and {kind}s; every item must be of one type", tok.pos)
            values.append(value)
            if self.peek().kind == ",":
                self.take()
            elif self.peek().kind != "]":
                self.fail(f"expected ',' or ']' in the list, found {_describe(self.peek())}", self.peek().pos)
        self.take()
        return tuple(values)

    def compare(self, left: _Operand, op: _Tok, right: _Operand) -> _Test:
        if left.kind == "column" and right.kind == "column":
            self.fail(f"'{left.value} {op.value} {right.value}' compares two columns; "
                      "one side must be a value", op.pos,
                      hint=f"a text value goes in quotes: {left.value} {op.value} \"{right.value}\"")
        if "list" in (left.kind, right.kind):
            self.fail(f"a list can only follow 'in' or 'not in', not '{op.value}'", op.pos)
        if left.kind != "column" and right.kind != "column":
            self.fail(f"'{op.value}' compares two values; one side must be a column name", op.pos)
        column, value, sym = (left, right, op.value) if left.kind == "column" else (right, left, _FLIP[op.value])
        if value.value is None:
            if sym in ("==", "!="):
                self.fail(f"'{sym} null' is never true; write '{column.value} is "
                          f"{'not ' if sym == '!=' else ''}null'", op.pos)
            self.fail(f"cannot compare with null using '{sym}'", op.pos)
        return _Test(column.value, sym, value.value, column.pos, op.pos)

    def membership(self, left: _Operand, op: _Tok, right: _Operand, negate: bool) -> _Test:
        word = "not in" if negate else "in"
        if left.kind == "column" and right.kind == "list":
            return _Test(left.value, word, right.value, left.pos, op.pos)
        if left.kind == "literal" and right.kind == "column" and left.value is not None:
            return _Test(right.value, "not has" if negate else "has", left.value, right.pos, op.pos)
        if left.kind == "column" and right.kind == "column":
            self.fail(f"'{left.value} {word} {right.value}' relates two columns; one side must be a value", op.pos)
        if left.kind == "column":
            self.fail(f"'{word}' needs a list on its right, e.g. {left.value} {word} [\"a\", \"b\"] "
                      f"(for a substring, use {left.value}.contains(\"...\"))", right.pos)
        self.fail(f"'{word}' needs a column on one side and a value (not null) on the other", op.pos)

    def method(self, left: _Operand) -> _Test:
        dot = self.take()
        if left.kind != "column":
            self.fail("only a column has methods", dot.pos)
        name = self.take()
        if name.kind != "name" or name.value not in METHODS:
            shown = f"'.{name.value}()'" if name.kind == "name" else _describe(name)
            self.fail(f"unknown method {shown}; the methods are {', '.join(METHODS)}", name.pos)
        usage = f'{left.value}.{name.value}("text")'
        self.expect("(", f"'(' after .{name.value}, as in {usage}")
        arg = self.take()
        if arg.kind != "str":
            self.fail(f".{name.value}() takes one string in quotes, as in {usage}; found {_describe(arg)}", arg.pos)
        close = self.take()
        if close.kind != ")":
            self.fail(f".{name.value}() takes exactly one string, as in {usage}; found {_describe(close)}", close.pos)
        return _Test(left.value, name.value, arg.value, left.pos, name.pos)


def _value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "number"


# --- evaluation with pyarrow compute ------------------------------------------------------

def evaluate(expr: Expr, table: pa.Table, *, table_name: str = "the table") -> pa.BooleanArray:
    """The rows of `table` the expression selects, as a BooleanArray without nulls.

    An unknown column raises UnknownColumn (`.column` names it); a type mismatch SelectError."""
    names = table.column_names
    for name, pos in _column_refs(expr._root):
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            listing = ", ".join(names[:60]) + (", ..." if len(names) > 60 else "")
            raise UnknownColumn(name, f"unknown column '{name}' in {table_name}"
                                f"{f'; did you mean {close[0]!r}?' if close else ';'} columns: {listing}",
                                text=expr.text, pos=pos)
    return _Evaluator(expr.text, table).run(expr._root)


class _Evaluator:
    def __init__(self, text: str, table: pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.pa, self.pc, self.text, self.table, self.cache = pa, pc, text, table, {}

    def run(self, root: Any) -> pa.BooleanArray:
        return self.pc.fill_null(self.node(root), False)  # null (unknown) rows are not selected

    def fail(self, problem: str, pos: int):
        raise SelectError(problem, text=self.text, pos=pos)

    def node(self, node: Any) -> pa.BooleanArray:
        pc = self.pc
        if isinstance(node, _Bool):
            combine = pc.and_kleene if node.op == "and" else pc.or_kleene
            mask = self.node(node.items[0])
            for item in node.items[1:]:
                mask = combine(mask, self.node(item))
            return mask
        if isinstance(node, _Not):
            return pc.invert(self.node(node.item))  # invert keeps nulls null
        if isinstance(node, _Const):
            return self.pa.repeat(node.value, self.table.num_rows)
        try:
            return self.test(node)
        except (self.pa.ArrowException, TypeError, ValueError, OverflowError) as exc:  # a safety net
            self.fail(f"cannot evaluate this on column '{node.column}' "
                      f"({self.table.schema.field(node.column).type}): {exc}", node.at)

    def column(self, name: str) -> pa.Array:
        if name not in self.cache:
            pa, col = self.pa, self.table.column(name).combine_chunks()
            if pa.types.is_dictionary(col.type):
                col = col.dictionary_decode()
            if pa.types.is_string_view(col.type):
                col = col.cast(pa.large_string())
            self.cache[name] = col
        return self.cache[name]

    def test(self, t: _Test) -> pa.BooleanArray:
        pa, pc = self.pa, self.pc
        col = self.column(t.column)
        kind = _arrow_kind(pa, col.type)
        if t.op in ("is null", "is not null"):
            return pc.is_null(col) if t.op == "is null" else pc.is_valid(col)
        if kind == "null":  # a column with no values at all: every test is unknown
            return pa.nulls(len(col), pa.bool_())
        if t.op == "truth":
            if kind != "boolean":
                self.fail(f"column '{t.column}' ({col.type}) is not true/false; compare it with a value, "
                          f"e.g. {t.column} == ...", t.pos)
            return col
        if t.op in _CMP:
            if kind == "list":
                self.fail(f"column '{t.column}' holds lists ({col.type}); test an element with "
                          f"\"value\" in {t.column}", t.at)
            if kind == "boolean" and t.op not in ("==", "!="):
                self.fail(f"column '{t.column}' is true/false: only == and != apply", t.at)
            return _CMP_FUNCS[t.op](pc)(col, self.scalar(t, col.type, kind, t.value))
        if t.op in ("in", "not in"):
            if kind == "list":
                self.fail(f"column '{t.column}' holds lists ({col.type}); test an element with "
                          f"\"value\" in {t.column}", t.at)
            values = [self.scalar(t, col.type, kind, v).as_py() for v in t.value]
            if not values:
                value_set = pa.array([], col.type)
            elif kind == "number":  # ints, or doubles if any is one; is_in casts to the column's
                value_set = pa.array(values)
            else:
                value_set = pa.array(values, self.scalar(t, col.type, kind, t.value[0]).type)
            mask = self._null_where_null(col, pc.is_in(col, value_set=value_set, skip_nulls=True))
            return pc.invert(mask) if t.op == "not in" else mask
        if t.op in ("has", "not has"):
            mask = self._null_where_null(col, self.has(t, col, kind))
            return pc.invert(mask) if t.op == "not has" else mask
        # a METHOD
        if kind != "string":
            extra = f'; for an element of a list use "value" in {t.column}' if kind == "list" else ""
            self.fail(f".{t.op}() needs a text column; '{t.column}' is {col.type}{extra}", t.at)
        func = {"startswith": pc.starts_with, "endswith": pc.ends_with, "contains": pc.match_substring}[t.op]
        return func(col, pattern=t.value)

    def has(self, t: _Test, col: pa.Array, kind: str) -> pa.BooleanArray:
        """`value in column`: an element of a list column, or of a Python list written in a string."""
        pa, pc = self.pa, self.pc
        if kind == "string":  # a Python list written out: "['Sst-IRES-Cre', 'Ai148']", "[1, 2]"
            if isinstance(t.value, str):  # the element must appear quoted: not 'Sst-IRES-CreERT2'
                return pc.or_(pc.match_substring(col, pattern=f"'{t.value}'"),
                              pc.match_substring(col, pattern=f'"{t.value}"'))
            if isinstance(t.value, bool):
                self.fail(f"column '{t.column}' holds text: write the value in quotes", t.pos)
            # a number must stand alone between brackets, commas or spaces: 12 is not in "[123]"
            number = re.escape(str(t.value))
            return pc.match_substring_regex(col, pattern=rf"(?:^|[\[(,\s]){number}(?:[\]),\s]|$)")
        if kind != "list":
            self.fail(f"'in' with a value on its left needs a list column; '{t.column}' is {col.type} "
                      f"(did you mean {t.column} == {t.value!r}?)", t.at)
        element = col.type.value_type
        want = self.scalar(t, element, _arrow_kind(pa, element), t.value)
        hits = pc.fill_null(pc.equal(pc.list_flatten(col), want), False)
        rows = pc.filter(pc.list_parent_indices(col), hits)  # the rows holding the value
        return pc.is_in(pa.array(range(len(col)), rows.type), value_set=rows)

    def _null_where_null(self, col: pa.Array, mask: pa.BooleanArray) -> pa.BooleanArray:
        return self.pc.if_else(self.pc.is_null(col), self.pa.scalar(None, self.pa.bool_()), mask)

    def scalar(self, t: _Test, type_: pa.DataType, kind: str, value: Any) -> pa.Scalar:
        """The literal as a scalar comparable with a column of `type_`, or a SelectError."""
        pa, what = self.pa, f"column '{t.column}'"
        if kind == "string":
            if not isinstance(value, str):
                self.fail(f"{what} holds text ({type_}); put the value in quotes: \"{value}\"", t.at)
            return pa.scalar(value, type_)
        if kind == "number":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                advice = "remove the quotes to compare numbers" if isinstance(value, str) else "use a number"
                self.fail(f"{what} holds numbers ({type_}) and {_show(value)} is not a number; {advice}", t.at)
            return pa.scalar(value)
        if kind == "boolean":
            if not isinstance(value, bool):
                self.fail(f"{what} is true/false ({type_}); compare it with true or false, not {_show(value)}", t.at)
            return pa.scalar(value)
        if kind in ("timestamp", "date"):
            if not isinstance(value, str):
                self.fail(f"{what} holds {kind}s ({type_}); write the value in quotes, e.g. \"2019-06-01\"", t.at)
            return self.when(t, type_, kind, value)
        self.fail(f"{what} has type {type_}, which --where can only test with 'is null'", t.at)

    def when(self, t: _Test, type_: pa.DataType, kind: str, value: str) -> pa.Scalar:
        pa = self.pa
        try:
            moment = _dt.datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{_show(value)} is not a date or time; write it like \"2019-06-01\" or "
                      f"\"2019-06-01 14:30:00\"", t.at)
        if kind == "date":
            if moment.time() != _dt.time(0) or moment.tzinfo is not None:
                self.fail(f"column '{t.column}' holds dates; compare it with a date like \"2019-06-01\"", t.at)
            return pa.scalar(moment.date(), type_)
        if type_.tz is not None and moment.tzinfo is None:
            moment = moment.replace(tzinfo=_dt.UTC)  # a zoned column: read the literal as UTC
        elif type_.tz is None and moment.tzinfo is not None:
            moment = moment.astimezone(_dt.UTC).replace(tzinfo=None)
        # Microseconds hold any literal exactly; compute brings both sides to one unit.
        return pa.scalar(moment, pa.timestamp("us", type_.tz))


def _show(value: Any) -> str:
    return "null" if value is None else (f'"{value}"' if isinstance(value, str) else str(value).lower()
                                         if isinstance(value, bool) else str(value))


_CMP_FUNCS = {"==": lambda pc: pc.equal, "!=": lambda pc: pc.not_equal, "<": lambda pc: pc.less,
              "<=": lambda pc: pc.less_equal, ">": lambda pc: pc.greater, ">=": lambda pc: pc.greater_equal}


def _arrow_kind(pa: Any, type_: pa.DataType) -> str:
    types = pa.types
    for kind, test in (("null", types.is_null), ("boolean", types.is_boolean), ("string", types.is_string),
                       ("string", types.is_large_string), ("number", types.is_integer),
                       ("number", types.is_floating), ("number", types.is_decimal),
                       ("timestamp", types.is_timestamp), ("date", types.is_date), ("list", types.is_list),
                       ("list", types.is_large_list), ("list", types.is_fixed_size_list)):
        if test(type_):
            return kind
    return "other"
