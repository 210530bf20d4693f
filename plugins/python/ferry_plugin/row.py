"""The ``transform-row`` contract (``ferry:transform@0.2.0``) for Python.

    import ferry_plugin.row as ferry

    class Rules:
        def describe(self, source: ferry.TableSchema) -> list[ferry.TableSchema]: ...
        def transform(self, table: str, row: list[ferry.Value]) -> list[ferry.OutputRow]: ...
        def target_keys(self, table: str, key: list[ferry.Value]) -> list[ferry.OutputKey]: ...

    TransformRow = ferry.transform_row(Rules())

``describe`` raises ``ValueError`` (or returns normally) to refuse a table;
``transform`` returns zero rows to filter, raises ``Reject``/``Fatal``.
Values are the contract's variant cases, re-exported here with short names
(``ferry.Int64(7)``, ``ferry.Text("a")``, ``ferry.NULL``).
"""

from componentize_py_types import Err, Ok

from wit_world.imports import types as _types

from . import Fatal, Reject

TableSchema = _types.TableSchema
Column = _types.Column
ScalarKind = _types.ScalarKind
Scalar = _types.ColumnType_Scalar
Array = _types.ColumnType_Array
Other = _types.ColumnType_Other
OutputRow = _types.OutputRow
OutputKey = _types.OutputKey
Interval = _types.Interval

# Every value case under its short name: Boolean, Int16 … ArrayInterval, Unsupported.
for _name in dir(_types):
    if _name.startswith("Value_"):
        globals()[_name[len("Value_"):]] = getattr(_types, _name)
NULL = _types.Value_Null()


def _error(e: Exception):
    if isinstance(e, Reject):
        return _types.RowError_Reject(e.reason)
    return _types.RowError_Fatal(e.reason)


def transform_row(rules):
    """The ``transform-row`` export of a rules object (see the module doc)."""

    class TransformRow:
        def describe(self, source):
            try:
                return rules.describe(source)
            except (ValueError, Reject, Fatal) as e:
                raise Err(str(e))

        def transform_batch(self, table, rows):
            out = []
            for row in rows:
                try:
                    out.append(Ok(rules.transform(table, row)))
                except (Reject, Fatal) as e:
                    out.append(Err(_error(e)))
            return out

        def target_keys(self, table, key):
            try:
                return rules.target_keys(table, key)
            except (Reject, Fatal) as e:
                raise Err(_error(e))

    return TransformRow
