// Text rules StarlingMonkey gets wrong, done right for every plugin.
//
// StarlingMonkey (built without ICU) lowercases without Unicode's
// Final_Sigma rule, and its regular expressions know no \p{Cased}: a
// capital sigma ending a word must become 'ς' (as in V8, Rust and Python).
// `toLowerCase` applies it on the original text, then lowercases the rest.
// Cased: has a case mapping; case-ignorable: the common marks (combining
// diacritics, apostrophes, periods, colons, soft hyphen) — an
// approximation of Unicode's lists, exact for Greek words.

const isCased = (c) => c.toLowerCase() !== c || c.toUpperCase() !== c;
const isCaseIgnorable = (c) => /^[\u0300-\u036F'.:^`\u00AD\u2018\u2019\u00B7]$/.test(c);

/** `text.toLowerCase()` with Unicode's Final_Sigma rule. */
export function toLowerCase(text) {
  // Without a capital sigma the engine's own lowercasing is exact.
  if (!text.includes('\u03A3')) return text.toLowerCase();
  const cps = [...text];
  let out = '';
  for (let i = 0; i < cps.length; i++) {
    if (cps[i] === '\u03A3') {
      let before = i - 1;
      while (before >= 0 && isCaseIgnorable(cps[before])) before--;
      let after = i + 1;
      while (after < cps.length && isCaseIgnorable(cps[after])) after++;
      const final = before >= 0 && isCased(cps[before]) && !(after < cps.length && isCased(cps[after]));
      out += final ? '\u03C2' : '\u03C3';
    } else {
      out += cps[i].toLowerCase();
    }
  }
  return out;
}
