#!/usr/bin/env node
// Builds a JavaScript Kapsule policy into a WebAssembly component with componentize-js 0.23.
// Usage: kapsule-policy-build POLICY.js -o OUT.wasm   (node build.mjs ... from a checkout)
//
// POLICY.js is an ES module that imports from 'kapsule-policy' and exports
// `{ init, plan, decide, reveal }` (see kapsule-policy.js). componentize-js takes one source file,
// so the policy is first bundled with rolldown: its imports (relative files and npm packages) are
// resolved as Node resolves them, 'kapsule-policy' is this SDK (the copy that runs the build), and
// the component's host imports (`log`, `describe-schema`) stay imports. The build disables the `http` and
// `fetch-event` features: Kapsule grants no network, and a module importing wasi:http is refused.
import { realpathSync } from 'node:fs';
import { writeFile, mkdir } from 'node:fs/promises';
import { dirname, resolve, join, basename } from 'node:path';
import { fileURLToPath } from 'node:url';

const sdk = dirname(fileURLToPath(import.meta.url));

/** The world's imports, provided by the host: never bundled. */
const HOST_IMPORTS = ['log', 'describe-schema'];

function die(msg) {
  console.error(`kapsule js build: ${msg}`);
  process.exit(1);
}

/**
 * Bundles policy module `entry` with this SDK into one ES module's source. `hostLog` and
 * `hostDescribeSchema`, paths of modules, stand in for the host's `log` and `describe-schema`
 * imports (the SDK's tests fake the host with them).
 */
export async function bundlePolicy(entry, { hostLog, hostDescribeSchema } = {}) {
  const { rolldown } = await import('rolldown');
  const alias = { 'kapsule-policy': join(sdk, 'kapsule-policy.js') };
  if (hostLog) alias.log = resolve(hostLog);
  if (hostDescribeSchema) alias['describe-schema'] = resolve(hostDescribeSchema);
  const bundle = await rolldown({
    input: resolve(entry),
    platform: 'neutral',
    external: (id) =>
      (HOST_IMPORTS.includes(id) && !(id in alias)) || /^(wasi|kapsule):/.test(id),
    resolve: { alias },
    logLevel: 'warn',
  });
  try {
    const { output } = await bundle.generate({ format: 'esm', codeSplitting: false });
    if (output.length !== 1) {
      throw new Error('the policy must be one module graph without dynamic import()');
    }
    return output[0].code;
  } finally {
    await bundle.close();
  }
}

async function main() {
  const args = process.argv.slice(2);
  let src;
  let out;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '-o' || args[i] === '--out') out = args[++i];
    else if (!src) src = args[i];
    else die(`unexpected argument ${args[i]}`);
  }
  if (!src || !out) die('usage: kapsule-policy-build POLICY.js -o OUT.wasm');
  let componentize;
  try {
    ({ componentize } = await import('@bytecodealliance/componentize-js'));
  } catch (e) {
    if (e && e.code === 'ERR_MODULE_NOT_FOUND') {
      die('componentize-js not found: run `npm install` (it is a dependency of kapsule-policy)');
    }
    throw e;
  }
  const source = await bundlePolicy(src).catch((e) => die(`${src}: ${e.message}`));
  const started = Date.now();
  const { component } = await componentize(source, {
    sourceName: basename(src),
    witPath: join(sdk, 'wit'),
    worldName: 'kapsule:policy/policy',
    disableFeatures: ['http', 'fetch-event'],
  });
  await mkdir(dirname(resolve(out)), { recursive: true });
  await writeFile(out, component);
  console.error(`kapsule js build: ${out} (${(component.length / 1048576).toFixed(1)} MiB, ${Date.now() - started} ms)`);
}

// Run as a program: `node build.mjs`, or through npm's bin link (a symlink, hence realpath).
if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => die(e && e.stack ? e.stack : String(e)));
}
