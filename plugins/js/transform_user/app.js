// The seed's `transformUser` in JavaScript: the seed's own code, with what
// the contract adds (NULLs rejected with the same reasons as the Rust and
// Python plugins, and the JSON the plugins' parsers refuse refused alike).
import { transformUser as exportTransformUser, userKey as exportUserKey, Reject } from '../ferry_plugin/user.js';
import { toLowerCase } from '../ferry_plugin/text.js';

const MAX_DEPTH = 128;

// Refuses what JSON parsers disagree on (the Rust rules' scan, same
// messages): nesting deeper than MAX_DEPTH and a surrogate escape that is
// not half of a pair (JSON.parse would accept both).
function refuseUnportable(text) {
  let brackets = 0;
  for (const c of text) if (c === '[' || c === '{') brackets++;
  if (brackets <= MAX_DEPTH && !text.includes('\\u')) return;
  const lone = () => { throw new Error('a lone surrogate escape is not text'); };
  let depth = 0, inString = false, high = false, i = 0;
  while (i < text.length) {
    const c = text[i];
    if (inString) {
      if (c === '\\' && text[i + 1] === 'u') {
        const hexits = text.slice(i + 2, i + 6);
        const unit = /^[0-9a-fA-F]{4}$/.test(hexits) ? parseInt(hexits, 16) : null;
        // A high half must be followed at once by a low half.
        if (unit !== null && unit >= 0xd800 && unit <= 0xdbff && !high) high = true;
        else if (unit !== null && unit >= 0xdc00 && unit <= 0xdfff && high) high = false;
        else if (unit !== null && unit >= 0xd800 && unit <= 0xdfff) lone();
        else if (high) lone();
        i += 6;
        continue;
      }
      if (high) lone();
      if (c === '\\') { i += 2; continue; }
      if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '[' || c === '{') {
      if (++depth > MAX_DEPTH) throw new Error(`nested deeper than ${MAX_DEPTH} levels`);
    } else if (c === ']' || c === '}') depth = Math.max(depth - 1, 0);
    i++;
  }
}

function parseMetadata(text) {
  try {
    refuseUnportable(text);
    return JSON.parse(text);
  } catch (e) {
    throw new Reject(`metadata is not valid JSON: ${e.message}`);
  }
}

function targetKey(id) {
  return `user_${id}`;
}

function transform(legacy) {
  if (legacy.name === undefined || legacy.name === null) throw new Reject("name is NULL (the seed's name.split(' ') throws a TypeError)");
  if (legacy.email === undefined || legacy.email === null) throw new Reject("email is NULL (the seed's email.toLowerCase() throws a TypeError)");
  if (legacy.createdAt === undefined || legacy.createdAt === null) throw new Reject('created_at is NULL (the new users table requires it)');

  const [firstName, ...lastNameParts] = legacy.name.split(' ');
  const lastName = lastNameParts.join(' ') || '';

  const metadata = legacy.metadata ? parseMetadata(legacy.metadata) : {};
  if (metadata === null) throw new Reject('metadata is JSON null (the seed reads null.theme and throws a TypeError)');

  return {
    id: targetKey(legacy.id),
    firstName,
    lastName,
    email: toLowerCase(legacy.email),
    createdAt: legacy.createdAt,
    settings: JSON.stringify({
      theme: metadata.theme || 'light',
      notifications: metadata.notifications ?? true,
    }),
  };
}

// The component's exports, named after the contract's interfaces.
export const transformUser = exportTransformUser(transform);
export const userKey = exportUserKey(targetKey);
