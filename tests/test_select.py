"""`--where` expressions (mirror/select.py): every example is checked against an independent
model in plain Python over the same rows, with SQL's three-valued logic for nulls."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import random
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from mirror.errors import InputError
from mirror.ids import read_ids
from mirror.select import Expr, SelectError, UnknownColumn, evaluate, parse

UTC = dt.UTC


KEYS = ("cre_line", "session_type", "project_code", "imaging_depth", "equipment_name", "age_in_days", "genotype",
        "mouse_id", "date_of_acquisition", "file_id", "driver_line", "passed", "note")


def _row(*values):
    """A row; `note` (the last key) may be left out."""
    return dict(zip(KEYS, values + (None,) * (len(KEYS) - len(values)), strict=True))


SST = "Sst-IRES-Cre/wt;Ai148(TIT2L-GC6f-ICL-tTA2)/wt"
VIP = "Vip-IRES-Cre/wt;Ai148(TIT2L-GC6f-ICL-tTA2)/wt"
SLC = "Slc17a7-IRES2-Cre/wt;Camk2a-tTA/wt;Ai93(TITL-GCaMP6f)/wt"
ROWS = [
    _row("Sst-IRES-Cre", "OPHYS_1_images_A", "VisualBehavior", 175, "CAM2P.4", 130.0, SST, 123456,
         dt.datetime(2019, 5, 17, 14, 39, 43, tzinfo=UTC), 11, ["Sst-IRES-Cre", "Ai148"], True, "it's"),
    _row("Vip-IRES-Cre", "OPHYS_2_images_A_passive", "VisualBehaviorTask1B", 275, "MESO.1", 95.0, VIP, 234567,
         dt.datetime(2019, 6, 1, tzinfo=UTC), None, ["Vip-IRES-Cre", "Ai148"], False, 'say "hi"'),
    _row("Slc17a7-IRES2-Cre", "OPHYS_1_images_B", "VisualBehaviorMultiscope", None, "MESO.1", 120.5, SLC, 345678,
         dt.datetime(2020, 1, 10, 9, tzinfo=UTC), 13, ["Slc17a7-IRES2-Cre", "Camk2a-tTA", "Ai93"], None,
         "back\\slash"),
    _row(None, "OPHYS_3_images_A", "VisualBehavior", 200, None, None, None, 123456, None, 14, None, True),
    _row("Sst-IRES-Cre", None, "VisualBehaviorTask1B", 300, "CAM2P.3", 200.0, SST, 456789,
         dt.datetime(2019, 6, 1, 0, 0, 1, tzinfo=UTC), 15, ["Sst-IRES-CreERT2", "Ai148"], False),
    _row("Vip-IRES-Cre", "OPHYS_5_images_B_passive", "VisualBehaviorMultiscope4areasx2d", 150, "MESO.1", 150.0,
         VIP, 567890, dt.datetime(2021, 3, 3, tzinfo=UTC), None, [], True),
    _row("Sst-IRES-Cre", "OPHYS_1_images_A", "VisualBehaviorMultiscope", 225, "MESO.1", 100.25, SST, 678901,
         dt.datetime(2019, 5, 31, 23, 59, 59, 500000, tzinfo=UTC), 17, ["Ai148", "Sst-IRES-Cre"], True),
    _row(None, None, None, None, None, None, None, None, None, None, None, None),
]


def _table(typed: bool) -> pa.Table:
    """The rows as Arrow. `typed`: a timestamp and a list<string> column; else both as strings,
    the way a CSV holds them ("2019-06-01 00:00:00+00:00", "['Sst-IRES-Cre', 'Ai148']")."""
    def col(k):
        return [r[k] for r in ROWS]

    fields = {k: pa.array(col(k), t) for k, t in [
        ("cre_line", pa.string()), ("session_type", pa.string()), ("project_code", pa.string()),
        ("imaging_depth", pa.int64()), ("equipment_name", pa.string()), ("age_in_days", pa.float64()),
        ("genotype", pa.string()), ("mouse_id", pa.int64()), ("file_id", pa.int64()), ("passed", pa.bool_()),
        ("note", pa.string())]}
    if typed:
        fields["date_of_acquisition"] = pa.array(col("date_of_acquisition"), pa.timestamp("ns", "UTC"))
        fields["driver_line"] = pa.array(col("driver_line"), pa.list_(pa.string()))
    else:
        fields["date_of_acquisition"] = pa.array([None if v is None else str(v) for v in col("date_of_acquisition")])
        fields["driver_line"] = pa.array([None if v is None else str(v) for v in col("driver_line")])
    return pa.table(fields)


@pytest.fixture(params=[True, False], ids=["typed", "strings"])
def table(request):
    return _table(request.param)


# --- an independent model: three-valued logic in plain Python -----------------------------

def v(r, key, f):
    """f(value), or None (unknown) when the value is null."""
    return None if r[key] is None else bool(f(r[key]))


def NOT(a):
    return None if a is None else not a


def AND(a, b):
    return False if False in (a, b) else (None if None in (a, b) else True)


def OR(a, b):
    return True if True in (a, b) else (None if None in (a, b) else False)


def _as_time(value):
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _drivers(value):
    return ast.literal_eval(value) if isinstance(value, str) else value  # the test may parse Python


EXAMPLES = [
    ('cre_line == "Sst-IRES-Cre" and session_type.startswith("OPHYS_1")',
     lambda r: AND(v(r, "cre_line", lambda x: x == "Sst-IRES-Cre"), v(r, "session_type", lambda x: x.startswith("OPHYS_1")))),
    ('project_code in ["VisualBehavior", "VisualBehaviorTask1B"]',
     lambda r: v(r, "project_code", lambda x: x in ("VisualBehavior", "VisualBehaviorTask1B"))),
    ("imaging_depth > 200", lambda r: v(r, "imaging_depth", lambda x: x > 200)),
    ('not (equipment_name == "MESO.1") or age_in_days >= 120.5',
     lambda r: OR(NOT(v(r, "equipment_name", lambda x: x == "MESO.1")), v(r, "age_in_days", lambda x: x >= 120.5))),
    ('session_type.endswith("_passive")', lambda r: v(r, "session_type", lambda x: x.endswith("_passive"))),
    ('genotype.contains("Slc17a7")', lambda r: v(r, "genotype", lambda x: "Slc17a7" in x)),
    ("project_code not in ['VisualBehavior', 'VisualBehaviorTask1B']",
     lambda r: NOT(v(r, "project_code", lambda x: x in ("VisualBehavior", "VisualBehaviorTask1B")))),
    ("mouse_id != 123456", lambda r: v(r, "mouse_id", lambda x: x != 123456)),
    ('date_of_acquisition >= "2019-06-01"',
     lambda r: v(r, "date_of_acquisition", lambda x: _as_time(x) >= dt.datetime(2019, 6, 1, tzinfo=UTC))),
    ('date_of_acquisition < "2019-06-01 00:00:00.5+00:00"',
     lambda r: v(r, "date_of_acquisition", lambda x: _as_time(x) < dt.datetime(2019, 6, 1, 0, 0, 0, 500000, tzinfo=UTC))),
    ("file_id is null", lambda r: r["file_id"] is None),
    ("file_id is not null", lambda r: r["file_id"] is not None),
    ('"Sst-IRES-Cre" in driver_line', lambda r: v(r, "driver_line", lambda x: "Sst-IRES-Cre" in _drivers(x))),
    ('"Sst-IRES-Cre" not in driver_line', lambda r: NOT(v(r, "driver_line", lambda x: "Sst-IRES-Cre" in _drivers(x)))),
    ("true", lambda r: True),
    ("false", lambda r: False),
    # null semantics: neither a test nor its negation selects a row where the value is null
    ("not (imaging_depth == 175)", lambda r: NOT(v(r, "imaging_depth", lambda x: x == 175))),
    ("not not imaging_depth == 175", lambda r: v(r, "imaging_depth", lambda x: x == 175)),
    ("imaging_depth == 175 or true", lambda r: True),
    ("imaging_depth == 175 and false", lambda r: False),
    # precedence: or < and < not < comparison
    ('cre_line == "Vip-IRES-Cre" or cre_line == "Sst-IRES-Cre" and imaging_depth < 200',
     lambda r: OR(v(r, "cre_line", lambda x: x == "Vip-IRES-Cre"),
                  AND(v(r, "cre_line", lambda x: x == "Sst-IRES-Cre"), v(r, "imaging_depth", lambda x: x < 200)))),
    ('(cre_line == "Vip-IRES-Cre" or cre_line == "Sst-IRES-Cre") and imaging_depth < 200',
     lambda r: AND(OR(v(r, "cre_line", lambda x: x == "Vip-IRES-Cre"), v(r, "cre_line", lambda x: x == "Sst-IRES-Cre")),
                   v(r, "imaging_depth", lambda x: x < 200))),
    ('not cre_line == "Sst-IRES-Cre" and not passed',
     lambda r: AND(NOT(v(r, "cre_line", lambda x: x == "Sst-IRES-Cre")), NOT(r["passed"]))),
    # literal op column is flipped; numbers negative, float, exponent
    ("200 < imaging_depth", lambda r: v(r, "imaging_depth", lambda x: x > 200)),
    ("120.5 >= age_in_days", lambda r: v(r, "age_in_days", lambda x: x <= 120.5)),
    ("imaging_depth > -1 and age_in_days < 1.2e2", lambda r: AND(v(r, "imaging_depth", lambda x: x > -1),
                                                               v(r, "age_in_days", lambda x: x < 120))),
    ("imaging_depth in [175, 300, -4]", lambda r: v(r, "imaging_depth", lambda x: x in (175, 300, -4))),
    ("age_in_days in [95, 120.5]", lambda r: v(r, "age_in_days", lambda x: x in (95, 120.5))),
    ("imaging_depth not in []", lambda r: v(r, "imaging_depth", lambda x: True)),
    # booleans, and the Python spellings True/False/None
    ("passed", lambda r: r["passed"]),
    ("passed == False", lambda r: v(r, "passed", lambda x: x is False)),
    ("passed != true", lambda r: v(r, "passed", lambda x: x is not True)),
    ("equipment_name is None", lambda r: r["equipment_name"] is None),
    ("True and cre_line is not None", lambda r: r["cre_line"] is not None),
    # strings: both quotes, escapes for quotes and backslash
    (r"note == 'it\'s'", lambda r: v(r, "note", lambda x: x == "it's")),
    (r'note == "say \"hi\""', lambda r: v(r, "note", lambda x: x == 'say "hi"')),
    (r'note == "back\\slash"', lambda r: v(r, "note", lambda x: x == "back\\slash")),
    ("""note in ["it's", 'say "hi"']""", lambda r: v(r, "note", lambda x: x in ("it's", 'say "hi"'))),
    ('cre_line >= "T"', lambda r: v(r, "cre_line", lambda x: x >= "T")),
    ("\tcre_line\n==\r\n'Vip-IRES-Cre'  ", lambda r: v(r, "cre_line", lambda x: x == "Vip-IRES-Cre")),
]


def _selected(mask: pa.BooleanArray, table: pa.Table) -> list[int]:
    assert isinstance(mask, pa.BooleanArray)
    assert len(mask) == table.num_rows and mask.null_count == 0
    return [i for i, hit in enumerate(mask.to_pylist()) if hit]


@pytest.mark.parametrize("text,model", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_examples_select_what_the_python_model_selects(table, text, model):
    expected = [i for i, r in enumerate(ROWS) if model(r) is True]
    assert _selected(evaluate(parse(text), table), table) == expected


def test_the_examples_are_not_trivial():
    """Most examples select some rows and leave others, so the comparison above means something."""
    trivial = [text for text, model in EXAMPLES if len({model(r) is True for r in ROWS}) == 1]
    assert set(trivial) <= {"true", "false", "imaging_depth == 175 or true", "imaging_depth == 175 and false"}


def test_hard_coded_spot_checks(table):
    assert _selected(evaluate(parse('"Sst-IRES-Cre" in driver_line'), table), table) == [0, 6]  # not CreERT2
    assert _selected(evaluate(parse('date_of_acquisition >= "2019-06-01"'), table), table) == [1, 2, 4, 5]
    assert _selected(evaluate(parse("not (imaging_depth == 175)"), table), table) == [1, 3, 4, 5, 6]


def test_random_comparisons_match_the_model():
    rng = random.Random(1234)
    values = [rng.choice([None, *range(-3, 4)]) for _ in range(200)]
    floats = [None if x is None else x / 2 for x in values]
    table = pa.table({"n": pa.array(values, pa.int64()), "f": pa.array(floats, pa.float64())})
    ops = {"==": int.__eq__, "!=": int.__ne__, "<": int.__lt__, "<=": int.__le__, ">": int.__gt__, ">=": int.__ge__}
    for _ in range(150):
        op, lit, col = rng.choice(list(ops)), rng.randint(-4, 4), rng.choice("nf")
        negate = rng.random() < 0.5
        text = f"{'not ' if negate else ''}{col} {op} {lit}"
        rows = values if col == "n" else floats
        model = [None if x is None else {"==": x == lit, "!=": x != lit, "<": x < lit, "<=": x <= lit,
                                         ">": x > lit, ">=": x >= lit}[op] for x in rows]
        model = [NOT(m) if negate else m for m in model]
        assert _selected(evaluate(parse(text), table), table) == [i for i, m in enumerate(model) if m is True], text


def test_chunked_dictionary_and_empty_tables():
    chunked = pa.Table.from_batches([pa.record_batch({"c": pa.array(["a", "b"]).dictionary_encode()}),
                                     pa.record_batch({"c": pa.array(["b", None]).dictionary_encode()})])
    assert _selected(evaluate(parse('c == "b"'), chunked), chunked) == [1, 2]
    empty = _table(True).slice(0, 0)
    assert _selected(evaluate(parse('cre_line == "x" or "a" in driver_line'), empty), empty) == []
    all_null = pa.table({"x": pa.nulls(3)})  # what pyarrow.csv infers for an empty column
    assert _selected(evaluate(parse("x == 1 or x.startswith('a')"), all_null), all_null) == []
    assert _selected(evaluate(parse("x is null"), all_null), all_null) == [0, 1, 2]


@pytest.mark.parametrize("typed", [True, False])
def test_membership_of_numbers_in_list_columns(typed):
    lists = [[951980471, 951980473], [1951980471], None, [], [951980473, 95198047], [5]]
    if typed:
        column = pa.array(lists, pa.list_(pa.int64()))
    else:  # as the CSVs hold them
        column = pa.array([None if x is None else str(x) for x in lists])
    t = pa.table({"ophys_experiment_id": column})
    for text, wanted, negate in [("951980471 in ophys_experiment_id", 951980471, False),
                                 ("95198047 in ophys_experiment_id", 95198047, False),
                                 ("5 not in ophys_experiment_id", 5, True)]:
        model = [None if x is None else (wanted in x) != negate for x in lists]
        assert _selected(evaluate(parse(text), t), t) == [i for i, m in enumerate(model) if m is True], text


def test_zoned_timestamps_compare_instants():
    zone = dt.timezone(dt.timedelta(hours=-7))
    moments = [dt.datetime(2019, 5, 31, 20, tzinfo=zone), dt.datetime(2019, 5, 31, 16, 30, tzinfo=zone)]
    t = pa.table({"ts": pa.array(moments, pa.timestamp("ns", "America/Los_Angeles"))})
    assert _selected(evaluate(parse('ts >= "2019-06-01"'), t), t) == [0]  # a literal without a zone is UTC
    assert _selected(evaluate(parse('ts < "2019-05-31T17:00:00-07:00"'), t), t) == [1]


def test_naive_timestamps_and_dates():
    t = pa.table({"ts": pa.array([dt.datetime(2019, 5, 31, 23), dt.datetime(2019, 6, 1, 1)], pa.timestamp("s")),
                  "d": pa.array([dt.date(2019, 5, 31), dt.date(2019, 6, 2)], pa.date32())})
    assert _selected(evaluate(parse('ts >= "2019-06-01"'), t), t) == [1]
    assert _selected(evaluate(parse('ts < "2019-06-01T00:30:00+00:00"'), t), t) == [0]
    assert _selected(evaluate(parse('d > "2019-06-01"'), t), t) == [1]
    assert _selected(evaluate(parse('d in ["2019-05-31"]'), t), t) == [0]
    with pytest.raises(SelectError, match="holds dates"):
        evaluate(parse('d > "2019-06-01 12:00"'), t)


def test_expr_is_immutable_and_knows_its_columns():
    expr = parse('cre_line == "x" and (200 < imaging_depth or "a" in driver_line or file_id is null)')
    assert expr.columns() == frozenset({"cre_line", "imaging_depth", "driver_line", "file_id"})
    assert parse("true").columns() == frozenset()
    assert expr.text.startswith("cre_line")
    with pytest.raises(dataclasses.FrozenInstanceError):
        expr.text = "x"  # type: ignore[misc]
    assert expr == parse(expr.text) and hash(expr) == hash(parse(expr.text))
    assert isinstance(expr, Expr)


# --- errors -------------------------------------------------------------------------------

def _syntax_error(text: str) -> SelectError:
    with pytest.raises(SelectError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, InputError) and err.exit_code == 2
    assert err.column is None
    assert type(err) is SelectError
    return err


@pytest.mark.parametrize("text,needle", [
    ('cre_line = "x"', "did you mean '=='"),
    ('a == 1 && b == 2', "did you mean 'and'"),
    ('a == 1 || b == 2', "did you mean 'or'"),
    ("!passed", "did you mean 'not'"),
    ("a <> 1", "did you mean '!='"),
    ('cre_line == "Sst', "unterminated string"),
    ("cre_line == 'Sst\\'", "unterminated string"),
    (r'cre_line == "a\n"', "unsupported escape"),
    ("", "empty expression"),
    ("   \n ", "empty expression"),
    ("a == 1 b", "unexpected name 'b'"),
    ("a == 1)", "unbalanced ')'"),
    ("(a == 1", "')' to close"),
    ("a == 1 AND b == 2", "did you mean 'and'"),
    ("a is NULL", "lowercase"),
    ("a ==", "ends too early"),
    ("a == 1 ==2", "join conditions"),
    ('a in [1, "x"]', "mixes numbers and strings"),
    ("a in ['x', true]", "mixes strings and booleans"),
    ("a in [1, null]", "cannot hold null"),
    ("a in [b]", "not column names"),
    ("a in [1 2]", "expected ',' or ']'"),
    ("a in [[1]]", "expected a value"),
    ('a in "abc"', "needs a list"),
    ("a == b", "compares two columns"),
    ("1 == 2", "one side must be a column"),
    ("a == [1]", "a list can only follow 'in'"),
    ("a == null", "a is null"),
    ("a != None", "a is not null"),
    ("1 is null", "needs a column"),
    ('"x"', "not a condition"),
    ("a.startswith(5)", "takes one string in quotes"),
    ("a.startswith()", "takes one string in quotes"),
    ('a.startswith("x", "y")', "exactly one string"),
    ('a.lower("x")', "unknown method '.lower()'"),
    ('a.startswith "x"', "'(' after .startswith"),
    ('"x".startswith("y")', "only a column has methods"),
    ("a > 5 - 3", "no arithmetic"),
    ("a > 12abc", "malformed number"),
    ("a == 1.2.3", "malformed number"),
    ("a == 99999999999999999999", "too large"),
    ("a == $1", "unexpected character '$'"),
    ("cré == 1", "unexpected character"),
])
def test_syntax_errors_name_the_problem_and_point_at_it(text, needle):
    err = _syntax_error(text)
    assert needle in err.message
    assert "^" in err.message and re.search(r"at column \d+", err.message)


def test_the_caret_points_at_the_offending_character():
    err = _syntax_error('cre_line == "a" and x = 3')
    assert "(at column 23)" in err.message
    expr_line, caret_line = err.message.splitlines()[1:3]
    assert expr_line.strip() == 'cre_line == "a" and x = 3'
    assert expr_line[caret_line.index("^")] == "="


def test_deep_nesting_long_names_and_long_text_are_refused_cleanly():
    for text in ["(" * 150 + "a == 1" + ")" * 150, "(" * 4990 + "a", "not " * 2400 + "a",
                 "not (" * 1000 + "a" + ")" * 1000]:
        assert "nested more than 100" in _syntax_error(text).message
    assert _selected(evaluate(parse("(" * 50 + "not " * 40 + "a == 1" + ")" * 50), pa.table({"a": [1, 2]})),
                     pa.table({"a": [1, 2]})) == [0]
    err = _syntax_error("a" * 5000 + " == 1")
    assert "5000 characters is too long" in err.message and len(err.message) < 400
    err = _syntax_error("b == 1 and " + "c" * 5000 + " == 1")
    assert "too long" in err.message and "(at column 12)" in err.message
    with pytest.raises(SelectError, match="10001 characters long; the limit is 10000"):
        parse("a == 1 " + " " * 9994)
    # a long expression is shown as a window around the error
    err = _syntax_error(" or ".join(["a == 1"] * 500) + " = 2")
    assert len(err.message) < 400 and "..." in err.message


def test_unknown_columns_suggest_and_list(table):
    with pytest.raises(UnknownColumn) as info:
        evaluate(parse('cre_line == "Sst-IRES-Cre" and imaging_dept > 200'), table, table_name="behavior_session_table")
    err = info.value
    assert isinstance(err, SelectError) and isinstance(err, InputError)
    assert err.column == "imaging_dept"
    assert "unknown column 'imaging_dept' in behavior_session_table; did you mean 'imaging_depth'?" in err.message
    assert "did you mean 'imaging_depth'? columns: cre_line, session_type" in err.message
    assert "(at column 32)" in err.message
    with pytest.raises(UnknownColumn) as info:
        evaluate(parse('cre_lin == "x"'), table)
    assert "did you mean 'cre_line'" in info.value.message and "in the table" in info.value.message
    with pytest.raises(UnknownColumn) as info:
        evaluate(parse("zzzzz == 1"), table)
    assert "unknown column 'zzzzz' in the table; columns: cre_line," in info.value.message
    assert "did you mean" not in info.value.message and info.value.column == "zzzzz"


@pytest.mark.parametrize("text,needles", [
    ('imaging_depth < "200"', ["imaging_depth", "int64", "remove the quotes"]),
    ('age_in_days == "x"', ["age_in_days", "double", "not a number"]),
    ("imaging_depth == true", ["imaging_depth", "not a number"]),
    ("cre_line == 5", ["cre_line", "quotes"]),
    ('cre_line in ["a", 1.5]', ["mixes"]),
    ("cre_line in [1, 2]", ["cre_line", "quotes"]),
    ("passed < true", ["only == and !="]),
    ('passed == "yes"', ["true or false"]),
    ("imaging_depth", ["not true/false"]),
    ("imaging_depth.startswith('1')", [".startswith() needs a text column", "int64"]),
    ('"x" in imaging_depth', ["needs a list column", "imaging_depth == 'x'"]),
    ("true in cre_line", ["in quotes"]),
])
def test_type_mismatches(table, text, needles):
    with pytest.raises(SelectError) as info:
        evaluate(parse(text), table)
    assert info.value.column is None and "^" in info.value.message
    for needle in needles:
        assert needle in info.value.message


def test_type_mismatches_of_timestamp_and_list_columns():
    table = _table(True)
    for text, needle in [('date_of_acquisition >= "June 1st"', '"June 1st" is not a date or time'),
                         ("date_of_acquisition >= 2019", "write the value in quotes"),
                         ('driver_line == "Ai148"', '"value" in driver_line'),
                         ('driver_line in ["Ai148"]', '"value" in driver_line'),
                         ('driver_line.contains("Ai148")', '"value" in driver_line'),
                         ("5 in driver_line", "quotes")]:
        with pytest.raises(SelectError) as info:
            evaluate(parse(text), table)
        assert needle in info.value.message, text


# --- read_ids -----------------------------------------------------------------------------

def test_read_ids_plain_list(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# my sessions\n\n 951980471 \r\n951980473  # second\n\n951980471\n")
    assert read_ids(path) == (None, [951980471, 951980473])


@pytest.mark.parametrize("header,row,column", [
    ("behavior_session_id", "{id}", "behavior_session_id"),
    ("ophys_container_id,ophys_experiment_id,cre_line", "1,{id},Sst", "ophys_experiment_id"),
    ("ophys_experiment_id,behavior_session_id", "7,{id}", "behavior_session_id"),  # the first of the list wins
    ("my_ids", "{id}", "my_ids"),  # the only column
    ('"ophys_session_id","note"', '{id},"a, b"', "ophys_session_id"),
])
def test_read_ids_csv(tmp_path, header, row, column):
    ids = [10, 20, 30, 20]
    path = tmp_path / "ids.csv"
    path.write_bytes(("\ufeff" + header + "\n" + "\n".join(row.format(id=i) for i in ids) + "\n\n").encode())
    assert read_ids(path) == (column, [10, 20, 30])


@pytest.mark.parametrize("content,needle", [
    ("1\n2\nthree\n4\n", "line 3: 'three' is not an integer id"),
    ("1\n2\n3.0\n", "line 3: '3.0'"),
    ("12\n-5\n", "line 2: '-5'"),
    ("12,13\n", "no id column"),
    ("behavior_session_id,x\n1,a\n\n2,b\nnope,c\n", "line 5: 'nope' is not an integer id"),
    ("behavior_session_id,x\n1,a\n,b\n", "line 3: an empty id"),
    ("cre_line,genotype\nSst,x\n", "no id column in the CSV header (cre_line, genotype)"),
    ("", "no ids"),
    ("# nothing\n\n", "no ids"),
    ("behavior_session_id\n", "no ids"),
    ("behavior_session_id,x\n1\n", "not a readable CSV"),
    ("99999999999999999999\n", "not an integer id"),
])
def test_read_ids_refuses_bad_files(tmp_path, content, needle):
    path = tmp_path / "ids.txt"
    path.write_text(content)
    with pytest.raises(SelectError) as info:
        read_ids(path)
    assert needle in info.value.message and str(path) in info.value.message


def test_read_ids_refuses_huge_missing_and_binary_files(tmp_path):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: no disk used
    with pytest.raises(SelectError, match="too large"):
        read_ids(huge)
    with pytest.raises(SelectError, match="cannot read the id list"):
        read_ids(tmp_path / "missing.txt")
    with pytest.raises(SelectError, match="cannot read the id list"):
        read_ids(tmp_path)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"1\n\xff\xfe\n")
    with pytest.raises(SelectError, match="not UTF-8"):
        read_ids(binary)


# --- the module itself --------------------------------------------------------------------

def test_the_module_never_hands_text_to_python():
    source = (Path(__file__).parents[1] / "mirror" / "select.py").read_text()
    for pattern in (r"\beval\(", r"\bexec\(", r"(?<![\w.])compile\(", r"\bimport ast\b", r"\bfrom ast\b",
                    r"__import__", r"\bpandas\b"):
        assert not re.search(pattern, source), pattern


def test_importing_the_module_loads_neither_pyarrow_nor_pandas():
    code = "import sys, mirror.select; print(sorted(m for m in ('pyarrow', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"
