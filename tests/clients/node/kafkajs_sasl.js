#!/usr/bin/env node
// Produce N records, then consume them back as a consumer-group member, with kafkajs over SASL
// (SASL_SSL with --cafile, SASL_PLAINTEXT without).
// Usage: node kafkajs_sasl.js --bootstrap HOST:PORT --topic T --group G --count N --mechanism M
//          --username U --password P [--cafile CA.pem] [--prefix P] [--timeout SECONDS]
// Values are `<prefix>-<i>`, keys `k<i>`. M is a kafkajs mechanism: plain, scram-sha-256, scram-sha-512.
// Output: {"produced": n, "values": [hex...]} (values read back, in offset order).
'use strict'
const fs = require('fs')
const { Kafka, logLevel } = require('kafkajs')
const { tohex, parseArgs, emit, fail } = require('./common')

async function main() {
  const a = parseArgs(process.argv.slice(2))
  for (const k of ['bootstrap', 'topic', 'group', 'count', 'mechanism', 'username', 'password']) {
    if (!a[k]) fail(`need --${k}`)
  }
  const count = Number(a.count)
  const prefix = a.prefix || 'kafkajs-sasl'
  const timeoutMs = Number(a.timeout || 60) * 1000
  const kafka = new Kafka({
    clientId: 'kapsule-rig-kafkajs',
    brokers: [a.bootstrap],
    logLevel: logLevel.WARN,
    ssl: a.cafile ? { ca: [fs.readFileSync(a.cafile, 'utf8')] } : false,
    sasl: { mechanism: a.mechanism, username: a.username, password: a.password },
    retry: { retries: 3 },
  })
  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await producer.connect()
  const messages = []
  for (let i = 0; i < count; i++) messages.push({ key: `k${i}`, value: `${prefix}-${i}` })
  await producer.send({ topic: a.topic, messages, acks: -1, timeout: 30000 })
  await producer.disconnect()
  console.error(`produced ${count}`)

  const consumer = kafka.consumer({ groupId: a.group, allowAutoTopicCreation: false, maxWaitTimeInMs: 500 })
  await consumer.connect()
  await consumer.subscribe({ topics: [a.topic], fromBeginning: true })
  const got = []
  let done
  const finished = new Promise(resolve => { done = resolve })
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ message }) => {
      if (got.length >= count) return
      got.push({ offset: Number(message.offset), value: tohex(message.value) })
      if (got.length >= count) done(false)
    },
  })
  const timer = setTimeout(() => done(true), timeoutMs)
  const timedOut = await finished
  clearTimeout(timer)
  await consumer.disconnect()
  if (timedOut) fail(`read back ${got.length} of ${count} records`)
  got.sort((x, y) => x.offset - y.offset)
  emit({ produced: count, values: got.map(r => r.value) })
}

main().catch(e => fail(e && e.stack ? e.stack : e, { error_type: e && e.name }))
