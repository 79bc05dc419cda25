#!/usr/bin/env python3
"""Checks the expected results of .slt files against DuckDB, the independent oracle.

Every `query` record is run in DuckDB (after the file's preceding `statement ok` records) and its
answer, rendered the way the Riffle test runner renders values, must equal the expected block.
Records DuckDB cannot run as written (Riffle-only syntax such as Flink connector DDL) are marked in
the .slt file with a comment line `# oracle: skip` just above them; a whole file with
`# oracle: skip-file`. Where DuckDB can compute the same answer in its own SQL (a Flink window table
function as bucket arithmetic, say), comment lines `# oracle-sql: …` just above the record give that
SQL, which DuckDB runs in place of the record's. Statements that fail in DuckDB are reported and their dependent queries skipped.

Usage (from the repository root, with the peers' venv that has duckdb):
    ~/.cache/riffle-peers/venv/bin/python tests/oracle/check_slt.py [tests/sql/...slt ...]
"""
import datetime
import decimal
import math
import pathlib
import sys

import duckdb

ROOT = pathlib.Path(__file__).resolve().parents[1]


def norm_float(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    digits = 12 - 1 - math.floor(math.log10(abs(v)))
    if digits <= 0:
        return f"{v:.0f}"
    t = f"{v:.{digits}f}"
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    return "0" if t == "-0" else t


def render(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return norm_float(v)
    if isinstance(v, decimal.Decimal):
        return format(v, "f")
    if isinstance(v, datetime.datetime):
        s = v.strftime("%Y-%m-%d %H:%M:%S")
        if v.microsecond:
            s += ("." + f"{v.microsecond:06d}").rstrip("0")
        return s
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, bytes):
        return "".join(chr(c) if 32 <= c < 127 else f"\\x{c:02X}" for c in v)
    s = str(v)
    return "(empty)" if s == "" else s


def records(text: str):
    """Yields (kind, header, sql, expected, skip, line) for each record."""
    lines = text.split("\n")
    i = 0
    skip_next = False
    oracle_sql = []
    while i < len(lines):
        line = lines[i]
        if line.strip() == "# oracle: skip":
            skip_next = True
            i += 1
            continue
        if line.startswith("# oracle-sql:"):
            oracle_sql.append(line[len("# oracle-sql:"):])
            i += 1
            continue
        if line.startswith("statement") or line.startswith("query"):
            start = i
            header = line.split()
            i += 1
            sql = []
            while i < len(lines) and lines[i].strip() != "" and lines[i] != "----":
                sql.append(lines[i])
                i += 1
            expected = []
            if i < len(lines) and lines[i] == "----":
                i += 1
                while i < len(lines) and lines[i].strip() != "":
                    expected.append(lines[i])
                    i += 1
            text_sql = "\n".join(oracle_sql) if oracle_sql else "\n".join(sql)
            yield header[0], header, text_sql, expected, skip_next, start + 1
            skip_next = False
            oracle_sql = []
        else:
            i += 1


def check_file(path: pathlib.Path) -> int:
    text = path.read_text()
    if "# oracle: skip-file" in text:
        print(f"skip {path}")
        return 0
    con = duckdb.connect()
    failures = 0
    checked = 0
    for kind, header, sql, expected, skip, line in records(text):
        if skip:
            continue
        if kind == "statement":
            if header[1] == "ok":
                try:
                    con.execute(sql)
                except Exception as e:  # noqa: BLE001
                    print(f"{path}:{line}: DuckDB cannot run this statement: {e}")
            continue
        try:
            rows = con.execute(sql).fetchall()
        except Exception as e:  # noqa: BLE001
            print(f"{path}:{line}: DuckDB error: {e}")
            failures += 1
            continue
        got = [" ".join(render(v) for v in r) for r in rows]
        if "rowsort" in header:
            got.sort()
            want = sorted(" ".join(e.split()) for e in expected)
        else:
            want = [" ".join(e.split()) for e in expected]
        got = [" ".join(g.split()) for g in got]
        checked += 1
        if got != want:
            failures += 1
            print(f"{path}:{line}: MISMATCH\n  sql: {sql}\n  duckdb: {got}\n  slt:    {want}")
    print(f"{path}: {checked} queries checked, {failures} differ")
    return failures


def main():
    paths = [pathlib.Path(p).resolve() for p in sys.argv[1:]] or sorted((ROOT / "sql").rglob("*.slt"))
    import os

    os.chdir(ROOT)
    total = sum(check_file(p.resolve()) for p in paths)
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
