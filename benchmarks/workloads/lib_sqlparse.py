"""Library workload: sqlparse, traced whole (callspan: --include sqlparse).

As in sqlparse's "Getting started" docs: ``sqlparse.split`` a script into statements,
``sqlparse.parse`` each one and walk the parsed statement (``get_type``, tokens, identifiers,
``Where`` clauses), and ``sqlparse.format(sql, reindent=True, keyword_case='upper')`` it. The
statements are generated but realistic (SELECTs with joins, subqueries, CASE, GROUP BY/HAVING,
window functions and CTEs; INSERT, UPDATE, DELETE, CREATE TABLE), each one different.

Deterministic. ``python lib_sqlparse.py [SCALE]`` (SCALE multiplies the number of statements).
The last stdout line is ``ELAPSED <seconds>`` for the work section only (the SQL is generated
and sqlparse imported outside it).
"""

import random
import sys
import time
import zlib

import sqlparse
from sqlparse.sql import Identifier, IdentifierList, Where

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
STATEMENTS = max(1, round(300 * SCALE))
PER_SCRIPT = 10  # statements per script given to sqlparse.split

TABLES = ("orders", "customers", "order_lines", "products", "invoices", "shipments")
COLUMNS = ("id", "customer_id", "created_at", "amount", "status", "sku", "qty", "region", "price")


def make_statement(rng, i):
    t1, t2 = rng.sample(TABLES, 2)
    c = rng.sample(COLUMNS, 4)
    kind = i % 8
    if kind == 0:
        return (f"select a.{c[0]}, a.{c[1]} as first_{c[1]}, count(*) as n, sum(b.{c[2]}) total "
                f"from {t1} a inner join {t2} b on a.id = b.{c[1]} "
                f"where a.{c[3]} > {rng.randint(1, 999)} and b.status in ('open', 'paid') "
                f"group by a.{c[0]}, a.{c[1]} having count(*) > {rng.randint(1, 9)} "
                f"order by total desc limit {rng.randint(5, 50)};")
    if kind == 1:
        return (f"select * from {t1} where {c[0]} in (select {c[1]} from {t2} where {c[2]} "
                f"between {rng.randint(1, 50)} and {rng.randint(51, 99)}) and {c[3]} is not null;")
    if kind == 2:
        return (f"select {c[0]}, case when {c[1]} < {rng.randint(1, 99)} then 'low' when {c[1]} < 500 "
                f"then 'mid' else 'high' end as bucket, coalesce({c[2]}, 0) from {t1} "
                f"left outer join {t2} using ({c[3]}) where {c[0]} like 'A%' or {c[0]} = 'x{i}';")
    if kind == 3:
        return (f"with recent as (select * from {t1} where created_at > now() - interval '{rng.randint(1, 30)} days'), "
                f"totals as (select {c[0]}, sum({c[1]}) as s from recent group by {c[0]}) "
                f"select r.*, t.s, rank() over (partition by r.{c[2]} order by t.s desc) as rnk "
                f"from recent r join totals t on t.{c[0]} = r.{c[0]};")
    if kind == 4:
        values = ", ".join(f"({rng.randint(1, 9999)}, 'v{rng.randint(0, 99)}', {rng.random():.3f})"
                           for _ in range(rng.randint(2, 6)))
        return f"insert into {t1} ({c[0]}, {c[1]}, {c[2]}) values {values};"
    if kind == 5:
        return (f"update {t1} set {c[0]} = {c[0]} + {rng.randint(1, 9)}, {c[1]} = 'done' "
                f"where {c[2]} = {rng.randint(1, 999)} and exists (select 1 from {t2} where {t2}.id = {t1}.{c[3]});")
    if kind == 6:
        return f"delete from {t1} where {c[0]} < {rng.randint(1, 999)} -- purge old rows\n and {c[1]} <> 'keep';"
    cols = ", ".join(f"{col} {rng.choice(['integer', 'varchar(64)', 'numeric(10, 2)', 'timestamp'])}"
                     for col in c)
    return f"create table if not exists {t1}_{i} (id serial primary key, {cols}, unique ({c[0]}, {c[1]}));"


def describe(statement):
    """Walk a parsed statement as the docs show: its type, identifiers and WHERE clause."""
    names = []
    where = 0
    for token in statement.tokens:
        if isinstance(token, IdentifierList):
            for ident in token.get_identifiers():
                names.append(str(ident.get_name()))
        elif isinstance(token, Identifier):
            names.append(str(token.get_real_name()))
        elif isinstance(token, Where):
            where += 1
    return statement.get_type(), len(names), where


def process(script):
    checksum = 0
    for text in sqlparse.split(script):
        statement = sqlparse.parse(text)[0]
        kind, names, where = describe(statement)
        pretty = sqlparse.format(text, reindent=True, keyword_case="upper")
        checksum = zlib.crc32(f"{kind}:{names}:{where}:{pretty}".encode(), checksum)
    return checksum


rng = random.Random(99)
scripts = []
for first in range(0, STATEMENTS, PER_SCRIPT):
    batch = []
    for i in range(first, min(first + PER_SCRIPT, STATEMENTS)):
        batch.append(make_statement(rng, i))
    scripts.append("\n".join(batch))

start = time.perf_counter()
checksum = 0
for script in scripts:
    checksum = zlib.crc32(str(process(script)).encode(), checksum)
elapsed = time.perf_counter() - start
print("statements", STATEMENTS, "scripts", len(scripts), "checksum", checksum)
print(f"ELAPSED {elapsed:.6f}")
