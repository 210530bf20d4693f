"""{{name}}: a ferry ``transform-row`` plugin. Each source row becomes one
row of a table of the same name and columns, its text values trimmed; a row
with an empty text value is rejected (dead-lettered with the reason).
Change the rules in ``transform``, the output tables in ``describe``."""

import ferry_plugin.row as ferry
from ferry_plugin import Reject


def base_name(name):
    return name.rsplit(".", 1)[-1]


class Rules:
    def describe(self, source):
        return [ferry.TableSchema(name=base_name(source.name), columns=source.columns, primary_key=source.primary_key)]

    def transform(self, table, row):
        values = []
        for i, value in enumerate(row):
            if isinstance(value, ferry.Text):
                if not value.value.strip():
                    raise Reject(f"column {i + 1} is empty")
                value = ferry.Text(value.value.strip())
            values.append(value)
        return [ferry.OutputRow(table=base_name(table), values=values)]

    def target_keys(self, table, key):
        return [ferry.OutputKey(table=base_name(table), key=key)]


TransformRow = ferry.transform_row(Rules())
