"""split-orders in Python: the ``transform-row`` example, the same rules as
the Rust plugin (``plugins/split-orders``), row for row.

The legacy ``orders`` table keeps its line items in a JSON column
(``[{"sku": "P1", "qty": 2, "price": "12.50"}, ...]``); the new schema has
``orders`` and ``order_items``. One source row becomes one order and one row
per item; test orders (``status = 'test'``) are filtered out; an order whose
items are not a JSON array of items is rejected. Prices stay exact: a
string, or a JSON number exactly as written.
"""

import json

import ferry_plugin.row as ferry
from ferry_plugin import Reject

INT32_MAX = 2**31 - 1


class IntText(str):
    """A JSON integer, as written."""


class NumberText(str):
    """A JSON number with a fraction or exponent, as written."""


def column(name, kind):
    return ferry.Column(name=name, type=ferry.Scalar(kind), nullable=False)


K = ferry.ScalarKind
OUTPUTS = [
    ferry.TableSchema(
        name="orders",
        columns=[
            column("id", K.INT64),
            column("customer_id", K.INT64),
            column("placed_at", K.TIMESTAMPTZ),
            column("status", K.TEXT),
            column("item_count", K.INT32),
        ],
        primary_key=["id"],
    ),
    ferry.TableSchema(
        name="order_items",
        columns=[
            column("order_id", K.INT64),
            column("line", K.INT32),
            column("sku", K.TEXT),
            column("qty", K.INT32),
            column("price", K.NUMERIC),
        ],
        primary_key=["order_id", "line"],
    ),
]


def integer(value, what):
    if isinstance(value, (ferry.Int16, ferry.Int32, ferry.Int64)):
        return value.value
    raise Reject(f"{what} is not an integer")


def text(value, what):
    if isinstance(value, (ferry.Text, ferry.Json)):
        return value.value
    if isinstance(value, ferry.Null):
        raise Reject(f"{what} is NULL")
    raise Reject(f"{what} is not text")


MAX_EXPONENT = 1000


def plain_decimal(text):
    """A JSON number's text as a plain decimal: as written without an
    exponent, else with it applied as PostgreSQL stores it (``1.5e-3`` ->
    ``0.0015``); ``None`` past +-MAX_EXPONENT. As in the Rust plugin."""
    e = max(text.find("e"), text.find("E"))
    if e < 0:
        return text
    exponent = int(text[e + 1 :])
    if abs(exponent) > MAX_EXPONENT:
        return None
    mantissa = text[:e]
    sign = ""
    if mantissa.startswith("-"):
        sign, mantissa = "-", mantissa[1:]
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + exponent
    if point <= 0:
        body = "0." + "0" * -point + digits
    elif point >= len(digits):
        body = digits + "0" * (point - len(digits))
    else:
        body = digits[:point] + "." + digits[point:]
    whole, dot, frac = body.partition(".")
    whole = whole.lstrip("0") or "0"
    return sign + whole + dot + frac


class Rules:
    def __init__(self):
        self.positions = None

    def describe(self, source):
        names = [c.name for c in source.columns]

        def find(name):
            if name not in names:
                raise ValueError(f"split-orders needs a column `{name}` in {source.name}")
            return names.index(name)

        self.positions = {n: find(n) for n in ("id", "customer_id", "placed_at", "status", "items")}
        return OUTPUTS

    def transform(self, table, row):
        p = self.positions
        id = integer(row[p["id"]], "id")
        status = text(row[p["status"]], "status").strip().lower()
        if status == "test":
            return []
        placed_at = row[p["placed_at"]]
        if not isinstance(placed_at, (ferry.Timestamp, ferry.Timestamptz)):
            raise Reject("placed_at is not a timestamp")
        try:
            items = json.loads(text(row[p["items"]], "items"), parse_int=IntText, parse_float=NumberText)
        except ValueError as e:
            raise Reject(f"items is not valid JSON: {e}")
        if not isinstance(items, list):
            raise Reject("items is not a JSON array")
        out = [
            ferry.OutputRow(
                table="orders",
                values=[
                    ferry.Int64(id),
                    ferry.Int64(integer(row[p["customer_id"]], "customer_id")),
                    ferry.Timestamptz(placed_at.value),
                    ferry.Text(status),
                    ferry.Int32(len(items)),
                ],
            )
        ]
        for line, item in enumerate(items):

            def field(name):
                if not isinstance(item, dict) or name not in item:
                    raise Reject(f"item {line} has no {name}")
                return item[name]

            sku = field("sku")
            if not isinstance(sku, str) or isinstance(sku, (IntText, NumberText)):
                raise Reject(f"item {line}: sku is not text")
            qty = field("qty")
            if not isinstance(qty, IntText) or not 0 < int(qty) <= INT32_MAX:
                raise Reject(f"item {line}: qty is not a positive integer")
            price = field("price")
            if isinstance(price, (IntText, NumberText)):
                price = plain_decimal(price)
                if price is None:
                    raise Reject(f"item {line}: price exponent out of range")
            elif not isinstance(price, str):
                raise Reject(f"item {line}: price is not a number")
            out.append(
                ferry.OutputRow(
                    table="order_items",
                    values=[ferry.Int64(id), ferry.Int32(line + 1), ferry.Text(str(sku)), ferry.Int32(int(qty)), ferry.Numeric(str(price))],
                )
            )
        return out

    def target_keys(self, table, key):
        # Items first (they reference the order); a key shorter than
        # order_items' (order_id, line) names every line of the order.
        return [ferry.OutputKey(table="order_items", key=key), ferry.OutputKey(table="orders", key=key)]


TransformRow = ferry.transform_row(Rules())
