// ferry's guest SDK for JavaScript plugins: the `transform-user` contract
// (ferry:transform@0.1.0), built with componentize-js.
//
//   import { transformUser, userKey, Reject } from '../ferry_plugin/user.js';
//   export const transformUser_ = ...
//
// A rules function takes a legacy row and returns a new one, or throws
// `Reject(reason)` (the row is dead-lettered) or `Fatal(reason)` (the run
// stops before the batch). 64-bit integers arrive as BigInt; StarlingMonkey
// hands a negative s64 over as its unsigned value, so the SDK reads every
// s64 through BigInt.asIntN(64, …) before the rules see it.

import { Fatal, Reject } from './errors.js';

export { Fatal, Reject };

const s64 = (x) => (x === undefined || x === null ? x : BigInt.asIntN(64, BigInt(x)));

function rowError(e) {
  if (e instanceof Reject) return { tag: 'reject', val: e.reason };
  if (e instanceof Fatal) return { tag: 'fatal', val: e.reason };
  throw e; // a bug in the plugin: it traps, ferry dead-letters the row
}

function legacy(row) {
  return { ...row, id: s64(row.id), createdAt: s64(row.createdAt) };
}

/** The `transform-user` export of a rules function. */
export function transformUser(rules) {
  const one = (row) => {
    const out = rules(legacy(row));
    return { ...out, createdAt: s64(out.createdAt) };
  };
  return {
    transform(row) {
      try { return one(row); } catch (e) { throw rowError(e); }
    },
    transformBatch(rows) {
      return rows.map((row) => {
        try { return { tag: 'ok', val: one(row) }; } catch (e) { return { tag: 'err', val: rowError(e) }; }
      });
    },
  };
}

/** The `user-key` export of a function legacy id (BigInt) → new key. */
export function userKey(targetKey) {
  return {
    targetKey(id) {
      try { return targetKey(s64(id)); } catch (e) { throw rowError(e); }
    },
  };
}
