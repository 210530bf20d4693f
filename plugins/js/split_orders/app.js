// split-orders in JavaScript: the `transform-row` example, the same rules as
// the Rust plugin (plugins/split-orders), row for row.
//
// The legacy `orders` table keeps its line items in a JSON column
// (`[{"sku": "P1", "qty": 2, "price": "12.50"}, …]`); the new schema has
// `orders` and `order_items`. One source row becomes one order and one row
// per item; test orders (`status = 'test'`) are filtered out; an order whose
// items are not a JSON array of items is rejected. Prices stay exact: a
// string, or a JSON number exactly as written (JSON.parse's source text).

import { transformRow as exportRow, value, Reject } from '../ferry_plugin/row.js';
import { toLowerCase } from '../ferry_plugin/text.js';

const INT32_MAX = 2n ** 31n - 1n;
const column = (name, kind) => ({ name, type: { tag: 'scalar', val: kind }, nullable: false });
const OUTPUTS = [
  {
    name: 'orders',
    columns: [column('id', 'int64'), column('customer_id', 'int64'), column('placed_at', 'timestamptz'),
      column('status', 'text'), column('item_count', 'int32')],
    primaryKey: ['id'],
  },
  {
    name: 'order_items',
    columns: [column('order_id', 'int64'), column('line', 'int32'), column('sku', 'text'), column('qty', 'int32'),
      column('price', 'numeric')],
    primaryKey: ['order_id', 'line'],
  },
];

/** A JSON number, with the text it was written as. */
class NumberText {
  constructor(text) { this.text = text; }
}

const MAX_EXPONENT = 1000;

/**
 * A JSON number's text as a plain decimal: as written without an exponent,
 * else with it applied as PostgreSQL stores it (`1.5e-3` → `0.0015`); null
 * past ±MAX_EXPONENT. As in the Rust plugin.
 */
function plainDecimal(text) {
  const e = text.search(/[eE]/);
  if (e < 0) return text;
  const exponent = Number(text.slice(e + 1));
  if (!(Math.abs(exponent) <= MAX_EXPONENT)) return null;
  let mantissa = text.slice(0, e);
  let sign = '';
  if (mantissa.startsWith('-')) [sign, mantissa] = ['-', mantissa.slice(1)];
  const [whole, frac = ''] = mantissa.split('.');
  const digits = whole + frac;
  const point = whole.length + exponent;
  let body;
  if (point <= 0) body = `0.${'0'.repeat(-point)}${digits}`;
  else if (point >= digits.length) body = digits + '0'.repeat(point - digits.length);
  else body = `${digits.slice(0, point)}.${digits.slice(point)}`;
  const [w, f] = body.split('.');
  const kept = w.replace(/^0+/, '') || '0';
  return f === undefined ? sign + kept : `${sign}${kept}.${f}`;
}

function integer(v, what) {
  if (v.tag === 'int16' || v.tag === 'int32') return BigInt(v.val);
  if (v.tag === 'int64') return v.val;
  throw new Reject(`${what} is not an integer`);
}

function text(v, what) {
  if (v.tag === 'text' || v.tag === 'json') return v.val;
  if (v.tag === 'null') throw new Reject(`${what} is NULL`);
  throw new Reject(`${what} is not text`);
}

let positions = null;

export const transformRow = exportRow({
  describe(source) {
    const names = source.columns.map((c) => c.name);
    const find = (name) => {
      const i = names.indexOf(name);
      if (i < 0) throw new Error(`split-orders needs a column \`${name}\` in ${source.name}`);
      return i;
    };
    positions = Object.fromEntries(['id', 'customer_id', 'placed_at', 'status', 'items'].map((n) => [n, find(n)]));
    return OUTPUTS;
  },

  transform(table, row) {
    const p = positions;
    const id = integer(row[p.id], 'id');
    const status = toLowerCase(text(row[p.status], 'status').trim());
    if (status === 'test') return [];
    const placedAt = row[p.placed_at];
    if (placedAt.tag !== 'timestamp' && placedAt.tag !== 'timestamptz') throw new Reject('placed_at is not a timestamp');
    let items;
    try {
      items = JSON.parse(text(row[p.items], 'items'), (key, v, context) =>
        typeof v === 'number' ? new NumberText(context.source) : v);
    } catch (e) {
      if (e instanceof Reject) throw e;
      throw new Reject(`items is not valid JSON: ${e.message}`);
    }
    if (!Array.isArray(items)) throw new Reject('items is not a JSON array');
    const out = [{
      table: 'orders',
      values: [value.int64(id), value.int64(integer(row[p.customer_id], 'customer_id')), value.timestamptz(placedAt.val),
        value.text(status), value.int32(items.length)],
    }];
    items.forEach((item, line) => {
      const field = (name) => {
        if (item === null || typeof item !== 'object' || Array.isArray(item) || !Object.hasOwn(item, name)) {
          throw new Reject(`item ${line} has no ${name}`);
        }
        return item[name];
      };
      const sku = field('sku');
      if (typeof sku !== 'string') throw new Reject(`item ${line}: sku is not text`);
      const qty = field('qty');
      const q = qty instanceof NumberText && /^-?\d+$/.test(qty.text) ? BigInt(qty.text) : 0n;
      if (q <= 0n || q > INT32_MAX) throw new Reject(`item ${line}: qty is not a positive integer`);
      const price = field('price');
      let exact;
      if (typeof price === 'string') exact = price;
      else if (price instanceof NumberText) {
        exact = plainDecimal(price.text);
        if (exact === null) throw new Reject(`item ${line}: price exponent out of range`);
      } else throw new Reject(`item ${line}: price is not a number`);
      out.push({
        table: 'order_items',
        values: [value.int64(id), value.int32(line + 1), value.text(sku), value.int32(Number(q)), value.numeric(exact)],
      });
    });
    return out;
  },

  targetKeys(table, key) {
    // Items first (they reference the order); a key shorter than
    // order_items' (order_id, line) names every line of the order.
    return [{ table: 'order_items', key }, { table: 'orders', key }];
  },
});
