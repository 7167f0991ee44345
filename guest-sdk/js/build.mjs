#!/usr/bin/env node
// Builds a JavaScript Kapsule policy into a WebAssembly component with componentize-js 0.23.
// Usage: node guest-sdk/js/build.mjs POLICY.js -o OUT.wasm
//
// POLICY.js is one ES module that imports from 'kapsule-policy'. componentize-js takes a single
// source file, so this script inlines the SDK (kapsule-policy.js) in place of that import — no
// bundler needed. Other imports are not resolved: bundle them first (e.g. esbuild) if you need them.
// The build disables the `http` and `fetch-event` features: Kapsule grants no network, and a
// module importing wasi:http is refused.
// Toolchain: scripts/install-policy-toolchains.sh installs componentize-js and jco into
// guest-sdk/js/node_modules, where this script finds them.
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { dirname, resolve, join, basename } from 'node:path';
import { fileURLToPath } from 'node:url';

const sdk = dirname(fileURLToPath(import.meta.url));

function die(msg) {
  console.error(`kapsule js build: ${msg}`);
  process.exit(1);
}

/** Inlines kapsule-policy.js into `app` in place of its `import ... from 'kapsule-policy'`. */
export function inlineSdk(sdkSource, app) {
  const hostImports = [];
  const body = sdkSource.replace(/^import\s+[^;]+;\s*$/gm, (m) => {
    hostImports.push(m.trim());
    return '';
  });
  const exportRe = /^export\s*\{([^}]*)\};?\s*$/m;
  const ex = body.match(exportRe);
  if (!ex) throw new Error('kapsule-policy.js has no export list');
  const iife = `const __kapsulePolicy = (() => {\n${body.replace(exportRe, `return {${ex[1]}};`)}\n})();\n`;
  let found = false;
  const importRe = /import\s+(\*\s+as\s+[A-Za-z_$][\w$]*|\{[^}]*\})\s+from\s+['"]kapsule-policy['"]\s*;?/g;
  const rewritten = app.replace(importRe, (_m, what) => {
    found = true;
    if (what.startsWith('*')) return `const ${what.replace(/^\*\s+as\s+/, '')} = __kapsulePolicy;`;
    const names = what.slice(1, -1).split(',').map((s) => s.trim()).filter(Boolean)
      .map((s) => s.replace(/\s+as\s+/, ': '));
    return `const { ${names.join(', ')} } = __kapsulePolicy;`;
  });
  if (!found) throw new Error("the policy does not import from 'kapsule-policy'");
  return `${hostImports.join('\n')}\n${iife}\n${rewritten}`;
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
  if (!src || !out) die('usage: node build.mjs POLICY.js -o OUT.wasm');
  let componentize;
  try {
    // Resolved from this file's directory: guest-sdk/js/node_modules.
    ({ componentize } = await import('@bytecodealliance/componentize-js'));
  } catch (e) {
    if (e && e.code === 'ERR_MODULE_NOT_FOUND') {
      die('componentize-js not found in guest-sdk/js/node_modules (run scripts/install-policy-toolchains.sh)');
    }
    throw e;
  }
  const app = await readFile(src, 'utf8').catch((e) => die(`${src}: ${e.message}`));
  const source = inlineSdk(await readFile(join(sdk, 'kapsule-policy.js'), 'utf8'), app);
  const started = Date.now();
  const { component } = await componentize(source, {
    sourceName: basename(src),
    witPath: resolve(sdk, '../../wit'),
    worldName: 'kapsule:policy/policy',
    disableFeatures: ['http', 'fetch-event'],
  });
  await mkdir(dirname(resolve(out)), { recursive: true });
  await writeFile(out, component);
  console.error(`kapsule js build: ${out} (${(component.length / 1048576).toFixed(1)} MiB, ${Date.now() - started} ms)`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => die(e && e.stack ? e.stack : String(e)));
}
