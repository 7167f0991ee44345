// Shared helpers for the kafkajs test clients: the same JSON record format as the Python clients
// (bytes in hex), one JSON object on the last stdout line, diagnostics on stderr.
'use strict'
const fs = require('fs')

const unhex = v => (v === null || v === undefined ? null : Buffer.from(v, 'hex'))
const tohex = b => (b === null || b === undefined ? null : Buffer.from(b).toString('hex'))

// Parses `--name value` and `--flag` arguments into an object.
function parseArgs(argv) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`)
    const name = a.slice(2)
    if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) out[name] = argv[++i]
    else out[name] = true
  }
  return out
}

// kafkajs takes headers as an object; repeated keys become arrays (kafkajs 2.x encodes each element
// as its own header). Headers with the same key must therefore be adjacent to keep their order.
function headersToObject(list) {
  const obj = {}
  for (const [k, v] of list || []) {
    const b = unhex(v)
    if (!(k in obj)) obj[k] = b
    else if (Array.isArray(obj[k])) obj[k].push(b)
    else obj[k] = [obj[k], b]
  }
  return obj
}

function headersToList(obj) {
  const out = []
  for (const [k, v] of Object.entries(obj || {})) {
    for (const x of Array.isArray(v) ? v : [v]) out.push([k, tohex(x)])
  }
  return out
}

function loadRecords(path) {
  return JSON.parse(fs.readFileSync(path, 'utf8')).records
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function fail(msg, extra = {}) {
  emit({ error: String(msg), ...extra })
  console.error('error:', msg)
  process.exit(1)
}

module.exports = { unhex, tohex, parseArgs, headersToObject, headersToList, loadRecords, emit, fail }
