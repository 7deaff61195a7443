"""Which source table goes into which target table, column by column, and in what order.
Pure functions over reflected schemas."""

from __future__ import annotations

from dataclasses import dataclass, field

from .convert import TargetColumn, source_value_sql
from .reflect import SourceTable, TargetTable, quote_sqlite

SKIP_TABLES = {"alembic_version"}


@dataclass
class TablePlan:
    source: str
    target: str
    columns: list[tuple[str, TargetColumn]]       # (source column, target column), in source order
    source_pk: list[str]                          # source columns that name a row in messages
    table: TargetTable
    parents: set[str] = field(default_factory=set)   # target tables it references (in the copy)

    @property
    def target_columns(self) -> list[TargetColumn]:
        return [c for _, c in self.columns]

    def read_sql(self, alias: str = "") -> list[str]:
        """The SQLite expression each column is read by (``alias.column``), as the copy, its
        checks and verify all read it: :func:`source_value_sql`."""
        prefix = f"{alias}." if alias else ""
        return [source_value_sql(c, prefix + quote_sqlite(s)) for s, c in self.columns]


def selected_tables(source, *, tables: list[str], exclude: list[str],
                    rename: dict[str, str]) -> list[tuple[str, str]]:
    """(source table, target table) of every source table the step copies, by name only: all
    but Alembic's version table, virtual tables that hold no data of their own (a full-text
    index), those excluded and those outside ``tables``."""
    wanted = set(tables)
    out = []
    for s_name in sorted(source):
        if source[s_name].derived:
            continue
        t_name = rename.get(s_name, s_name)
        if t_name in SKIP_TABLES or s_name in SKIP_TABLES:
            continue
        if wanted and s_name not in wanted and t_name not in wanted:
            continue
        if s_name in exclude or t_name in exclude:
            continue
        out.append((s_name, t_name))
    return out


def map_tables(source: dict[str, SourceTable], target: dict[str, TargetTable], *, tables: list[str],
               exclude: list[str], rename: dict[str, str], columns: dict[str, dict[str, str]],
               drop_columns: dict[str, list[str]]) -> tuple[list[TablePlan], list[str], list[str]]:
    """Returns (table plans, problems, notes). The target schema is the truth: a table is copied
    when it exists on both sides (after ``rename``), except Alembic's version table. A source
    table with no table in the target is a problem (its rows would be lost without a word)
    unless the step excludes or renames it."""
    problems, notes = [], []
    for key, what in ((rename, "rename"), (columns, "columns"), (drop_columns, "drop_columns")):
        for name in key:
            if name not in source:
                problems.append(f"{what}: the source has no table {name!r}")
    plans = []
    wanted = set(tables)
    unmapped = []
    for s_name, t_name in selected_tables(source, tables=tables, exclude=exclude, rename=rename):
        if t_name not in target:
            if s_name in rename:
                problems.append(f"rename: {s_name} -> {t_name}, but the target has no table {t_name!r}")
            else:
                unmapped.append(s_name)
            continue
        src, tgt = source[s_name], target[t_name]
        cmap, dropped = columns.get(s_name, {}), set(drop_columns.get(s_name, []))
        for name in list(cmap) + list(dropped):
            if name not in src.columns:
                problems.append(f"{s_name}: columns/drop_columns name {name!r}, which the source table does not have")
        pairs = []
        for col in src.columns:
            if col in dropped:
                continue
            t_col = cmap.get(col, col)
            computed = col in src.generated
            if computed and col not in cmap and (t_col not in tgt.columns or tgt.columns[t_col].generated):
                continue    # SQLite computes it from the row: no data of its own is left behind
            if t_col not in tgt.columns:
                problems.append(f"{s_name}.{col} has no column in target table {t_name} (map it under columns, "
                                f"or list it under drop_columns to leave it behind)")
                continue
            if tgt.columns[t_col].generated:
                problems.append(f"{t_name}.{t_col} is a generated column (PostgreSQL computes it and takes no value "
                                f"for it), and source column {s_name}.{col} would fill it: list {col} under "
                                f"drop_columns to leave it behind, or map it to another column under columns")
                continue
            pairs.append((col, tgt.columns[t_col]))
        filled = {c.name for _, c in pairs}
        for col in tgt.columns.values():
            if col.name not in filled and col.not_null and not col.has_default:
                problems.append(f"{t_name}.{col.name} is NOT NULL without a default and no source column fills it "
                                f"(map one under columns)")
        back = {c.name: s for s, c in pairs}
        pk = [back[c] for c in tgt.primary_key if c in back] or list(src.primary_key)
        plans.append(TablePlan(s_name, t_name, pairs, pk, tgt))
    if unmapped:
        problems.append(f"source table(s) {', '.join(unmapped)} have no table in the target schema: their rows "
                        f"would be left behind. Add them to exclude: to leave them out on purpose, or map each "
                        f"with rename: {{source_table: target_table}}")
    for name, table in sorted(source.items()):
        if table.derived and name not in exclude:
            notes.append(f"{name}: {table.derived}, holds no data of its own: not copied (PostgreSQL's full-text "
                         f"search keeps an index of its own: create it in a migration)")
    for name in wanted:
        if name not in source and name not in {rename.get(s, s) for s in source}:
            problems.append(f"tables: the source has no table {name!r}")
    copied = {p.target for p in plans}
    for p in plans:
        p.parents = {fk.ref_table for fk in p.table.foreign_keys if fk.ref_table in copied}
    return plans, problems, notes


def load_units(plans: list[TablePlan]) -> list[list[TablePlan]]:
    """Groups to load, parents before children: each group is a strongly connected component of
    the foreign-key graph (a table alone, or tables referencing each other in a cycle), so a
    group can re-add its foreign keys once all its tables are loaded."""
    by_name = {p.target: p for p in plans}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(name: str) -> None:   # Tarjan; emits a component after the components it references
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for parent in sorted(by_name[name].parents & by_name.keys()):   # parents not loaded now: no edge
            if parent not in index:
                visit(parent)
                low[name] = min(low[name], low[parent])
            elif parent in on_stack:
                low[name] = min(low[name], index[parent])
        if low[name] == index[name]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == name:
                    break
            groups.append(sorted(group))

    for name in sorted(by_name):
        if name not in index:
            visit(name)
    return [[by_name[n] for n in g] for g in groups]

