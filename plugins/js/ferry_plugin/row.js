// ferry's guest SDK for JavaScript plugins: the `transform-row` contract
// (ferry:transform@0.2.0), built with componentize-js.
//
//   import { transformRow as exportRow, Reject } from '../ferry_plugin/row.js';
//   export const transformRow = exportRow({
//     describe(source) { return [ /* output table schemas */ ]; },  // throw to refuse the table
//     transform(table, row) { return [ /* { table, values } */ ]; }, // [] filters; throw Reject/Fatal
//     targetKeys(table, key) { return [ /* { table, key } */ ]; },
//   });
//
// Values are the contract's variant, `{ tag, val }`: `{ tag: 'int64', val: 7n }`,
// `{ tag: 'text', val: 'a' }`, `{ tag: 'null' }` (`value.int64(7n)`, … build
// them). Every 64-bit integer (int64, time, timestamp, timestamptz, interval
// micros, and their arrays) is a BigInt: StarlingMonkey hands a negative s64
// over as its unsigned value, so the SDK reads each through
// BigInt.asIntN(64, …) before the rules see it, and writes it back the same way.

import { Fatal, Reject } from './errors.js';

export { Fatal, Reject };

const s64 = (x) => (x === undefined || x === null ? x : BigInt.asIntN(64, BigInt(x)));
const S64_TAGS = new Set(['int64', 'time', 'timestamp', 'timestamptz']);
const S64_ARRAYS = new Set(['array-int64', 'array-time', 'array-timestamp', 'array-timestamptz']);

function interval(i) {
  return i === undefined || i === null ? i : { ...i, micros: s64(i.micros) };
}

/** A value with every 64-bit integer exact (see the module doc). */
export function exact(v) {
  if (S64_TAGS.has(v.tag)) return { tag: v.tag, val: s64(v.val) };
  if (S64_ARRAYS.has(v.tag)) return { tag: v.tag, val: v.val.map(s64) };
  if (v.tag === 'interval') return { tag: v.tag, val: interval(v.val) };
  if (v.tag === 'array-interval') return { tag: v.tag, val: v.val.map(interval) };
  return v;
}

const TAGS = [
  'boolean', 'int16', 'int32', 'int64', 'float32', 'float64', 'numeric', 'text', 'bytes', 'json', 'uuid', 'date',
  'time', 'timestamp', 'timestamptz', 'interval', 'unsupported',
];

/** Builders of values: `value.text('a')`, `value.int64(7n)`, `value.null`; arrays: `value.array('int64', [1n, undefined])`. */
export const value = Object.fromEntries([
  ['null', { tag: 'null' }],
  ['array', (kind, items) => ({ tag: `array-${kind}`, val: items })],
  ...TAGS.map((tag) => [tag, (val) => ({ tag, val })]),
]);

function rowError(e) {
  if (e instanceof Reject) return { tag: 'reject', val: e.reason };
  if (e instanceof Fatal) return { tag: 'fatal', val: e.reason };
  throw e; // a bug in the plugin: it traps, ferry dead-letters the row
}

const outputRow = (r) => ({ table: r.table, values: r.values.map(exact) });

/** The `transform-row` export of a rules object (see the module doc). */
export function transformRow(rules) {
  return {
    describe(source) {
      try {
        return rules.describe(source);
      } catch (e) {
        throw e instanceof Error ? e.message : String(e);
      }
    },
    transformBatch(table, rows) {
      return rows.map((row) => {
        try {
          return { tag: 'ok', val: rules.transform(table, row.map(exact)).map(outputRow) };
        } catch (e) {
          return { tag: 'err', val: rowError(e) };
        }
      });
    },
    targetKeys(table, key) {
      try {
        return rules.targetKeys(table, key.map(exact)).map((k) => ({ table: k.table, key: k.key.map(exact) }));
      } catch (e) {
        throw rowError(e);
      }
    },
  };
}
