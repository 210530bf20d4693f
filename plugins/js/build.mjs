// Builds a JavaScript plugin into a component with componentize-js's API
// (`jco componentize` 1.35 fails in a clean install: a preview2-shim
// regression). Every WASI feature is disabled, so the component imports
// nothing but its contract. componentize-js imports
// @bytecodealliance/preview2-shim without declaring it, and 0.26 has that
// same regression ("reading file …: os error 44"): package.json pins 0.25.0
// at the top level.
//
// Usage: node build.mjs SOURCE.js WIT_DIR WORLD OUT.wasm
// (SOURCE under plugins/js, so that it can import ../ferry_plugin/…)
import { writeFile } from 'node:fs/promises';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const [source, witPath, worldName, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node build.mjs SOURCE.js WIT_DIR WORLD OUT.wasm');
  process.exit(2);
}
// StarlingMonkey resolves the plugin's relative imports against the working
// directory at build time: build from this directory (the SDK's parent),
// with the source named relative to it.
const here = dirname(fileURLToPath(import.meta.url));
const [sourcePath, wit, output] = [resolve(source), resolve(witPath), resolve(out)];
process.chdir(here);
const { component } = await componentize({
  sourcePath: relative(here, sourcePath),
  witPath: wit,
  worldName,
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(output, component);
