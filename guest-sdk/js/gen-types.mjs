#!/usr/bin/env node
// Generates the TypeScript declarations of the `kapsule:policy/policy` world (as a guest sees it:
// what the component imports and exports) from wit/policy.wit into types/, with jco's bindings
// generator. kapsule-policy.d.ts builds on them. Run after editing the WIT: `npm run gen-types`;
// `npm test` fails while types/ differs from what this script writes.
//
// The WIT is passed as source text: jco 1.35's `jco types` CLI cannot read files under Node 20.
import { readFile, writeFile, mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { $init, generateTypes } from '@bytecodealliance/jco-transpile/component';

const sdk = dirname(fileURLToPath(import.meta.url));

/** The generated declarations as [relative path, text] pairs. */
export async function worldTypes() {
  await $init;
  const source = await readFile(join(sdk, 'wit/policy.wit'), 'utf8');
  const files = generateTypes('kapsule-policy', {
    wit: { tag: 'source', val: source },
    world: 'kapsule:policy/policy',
    guest: true,
    instantiation: undefined,
    tlaCompat: false,
    features: { tag: 'list', val: [] },
    asyncMode: undefined,
  });
  const header =
    '// Generated from wit/policy.wit by gen-types.mjs (jco 1.35); do not edit.\n';
  return files.map(([name, bytes]) => [name, header + new TextDecoder().decode(bytes)]);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await rm(join(sdk, 'types'), { recursive: true, force: true });
  for (const [name, text] of await worldTypes()) {
    const out = join(sdk, 'types', name);
    await mkdir(dirname(out), { recursive: true });
    await writeFile(out, text);
    console.error(`wrote types/${name}`);
  }
}
