// {{name}}: a ferry `transform-user` plugin (the seed's `legacy-user` →
// `new-user`). `id` → `user_<id>`, the name split at its first space, the
// e-mail lowercased, `createdAt` kept (microseconds, a BigInt), `settings`
// `{}`; a NULL name, e-mail or creation time is rejected (dead-lettered).

import { transformUser as exportTransformUser, userKey as exportUserKey, Reject } from './ferry_plugin/user.js';
import { toLowerCase } from './ferry_plugin/text.js';

const targetKey = (id) => `user_${id}`;

function transform(row) {
  for (const what of ['name', 'email', 'createdAt']) {
    if (row[what] === undefined || row[what] === null) throw new Reject(`${what === 'createdAt' ? 'created_at' : what} is NULL`);
  }
  const space = row.name.indexOf(' ');
  return {
    id: targetKey(row.id),
    firstName: space < 0 ? row.name : row.name.slice(0, space),
    lastName: space < 0 ? '' : row.name.slice(space + 1),
    email: toLowerCase(row.email),
    createdAt: row.createdAt,
    settings: '{}',
  };
}

export const transformUser = exportTransformUser(transform);
export const userKey = exportUserKey(targetKey);
