// TEST ONLY: a JavaScript policy that misbehaves the way its config names, to prove Kapsule
// contains JavaScript guests. Never bind it to real topics.
//
// Config (one word): `ok` (per record: encrypts the whole value under `kek-ok`), `loop-decide`
// (never returns), `alloc-decide` (allocates 1 MiB after 1 MiB until memory runs out),
// `print-init` and `print-decide` (5000 console.log lines, then behave like `ok`), `raise-decide`
// (an exception in decide: the SDK refuses the batch), `trap-decide` (an exception thrown past the
// SDK: the instance traps), `wrong-count` (one choice too many, past the SDK), `bad-index` (a
// choice outside `distinct`, past the SDK), `bad-key` (a key id outside `allowed_key_ids`).
import { Decision, Encrypt, Needs, TopicPlan, exportPolicy } from 'kapsule-policy';

const MODES = new Set(['ok', 'loop-decide', 'alloc-decide', 'print-init', 'print-decide', 'raise-decide',
  'trap-decide', 'wrong-count', 'bad-index', 'bad-key']);
let mode = 'ok';

function storm(where) {
  for (let i = 0; i < 5000; i++) console.log(`hostile print storm in ${where} ${i}`);
}

class Hostile {
  constructor(config) {
    if (!MODES.has(config)) throw new Error(`hostile: unknown mode \`${config}\` (one of ${[...MODES].join(', ')})`);
    mode = config;
    if (mode === 'print-init') storm('init');
  }

  plan(_topic, _client) {
    return TopicPlan.perRecord(new Needs({ value: true }));
  }

  decide(_topic, _client, records) {
    if (mode === 'loop-decide') {
      let n = 0;
      for (;;) n++;
    }
    if (mode === 'alloc-decide') {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
    }
    if (mode === 'print-decide') storm('decide');
    if (mode === 'raise-decide') throw new Error('hostile policy throws in decide');
    const key = mode === 'bad-key' ? 'kek-not-allowed' : 'kek-ok';
    const d = Decision.encrypt(new Encrypt(key).wholeValue());
    return records.map(() => d);
  }
}

const sdk = exportPolicy(Hostile);
export const { init, plan, reveal } = sdk;

/** The SDK's decide, with answers the SDK would never build for the malformed modes. */
export function decide(topic, client, batch) {
  const n = batch.records.length / 32; // one 32-byte descriptor per record
  if (mode === 'trap-decide') throw new Error('hostile policy throws past the SDK');
  if (mode === 'wrong-count') return { distinct: [{ tag: 'pass' }], choices: new Uint32Array(n + 1) };
  if (mode === 'bad-index') return { distinct: [{ tag: 'pass' }], choices: new Uint32Array(n).fill(7) };
  return sdk.decide(topic, client, batch);
}
