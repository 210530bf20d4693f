// The oracle of the conformance test: the seed's own `transformUser`
// (shared/seed/data-migration.md), run by Node on the corpus. The plugins'
// outputs must equal what it prints. Ids and timestamps are BigInt (exact
// 64-bit); a row the seed throws on prints {"reject": true}.
//
// Usage: node seed.mjs < users.jsonl
import { createInterface } from 'node:readline';

function transformUser(legacy) {
  const [firstName, ...lastNameParts] = legacy.name.split(' ');
  const lastName = lastNameParts.join(' ') || '';

  const metadata = legacy.metadata
    ? JSON.parse(legacy.metadata)
    : {};

  return {
    id: `user_${legacy.id}`,
    firstName,
    lastName,
    email: legacy.email.toLowerCase(),
    createdAt: legacy.created_at,
    settings: {
      theme: metadata.theme || 'light',
      notifications: metadata.notifications ?? true,
    },
  };
}

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const row = JSON.parse(line);
  const legacy = { ...row, id: BigInt(row.id), created_at: row.created_at === null ? null : BigInt(row.created_at) };
  let out;
  try {
    const u = transformUser(legacy);
    // The new table requires created_at (the plugins reject a NULL one).
    if (u.createdAt === null) throw new TypeError('created_at is NULL');
    out = { id: u.id, first_name: u.firstName, last_name: u.lastName, email: u.email,
            created_at: u.createdAt.toString(), settings: JSON.stringify(u.settings) };
  } catch {
    out = { reject: true };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}
