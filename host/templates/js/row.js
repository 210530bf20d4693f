// {{name}}: a ferry `transform-row` plugin. Each source row becomes one row
// of a table of the same name and columns, its text values trimmed; a row
// with an empty text value is rejected (dead-lettered with the reason).
// Change the rules in `transform`, the output tables in `describe`.

import { transformRow as exportRow, value, Reject } from './ferry_plugin/row.js';

const baseName = (name) => name.split('.').pop();

export const transformRow = exportRow({
  describe(source) {
    return [{ ...source, name: baseName(source.name) }];
  },
  transform(table, row) {
    const values = row.map((v, i) => {
      if (v.tag !== 'text') return v;
      if (v.val.trim() === '') throw new Reject(`column ${i + 1} is empty`);
      return value.text(v.val.trim());
    });
    return [{ table: baseName(table), values }];
  },
  targetKeys(table, key) {
    return [{ table: baseName(table), key }];
  },
});
