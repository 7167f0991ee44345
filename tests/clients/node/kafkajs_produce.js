#!/usr/bin/env node
// Produce records from a JSON file with kafkajs.
// Usage: node kafkajs_produce.js --bootstrap HOST:PORT --topic T --input FILE [--compression none|gzip]
// Output: {"produced": n, "results": [{"partition": p, "baseOffset": "o"}, ...]}
'use strict'
const { Kafka, CompressionTypes, logLevel } = require('kafkajs')
const { unhex, parseArgs, headersToObject, loadRecords, emit, fail } = require('./common')

async function main() {
  const args = parseArgs(process.argv.slice(2))
  if (!args.bootstrap || !args.topic || !args.input) fail('need --bootstrap, --topic, --input')
  const compression = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP }[args.compression || 'none']
  if (compression === undefined) fail(`kafkajs has no built-in codec for ${args.compression}`)
  const kafka = new Kafka({ clientId: 'kapsule-rig-kafkajs', brokers: [args.bootstrap], logLevel: logLevel.WARN })
  const producer = kafka.producer({ allowAutoTopicCreation: false })
  await producer.connect()
  const messages = loadRecords(args.input).map(r => {
    const m = { key: unhex(r.key), value: unhex(r.value), headers: headersToObject(r.headers) }
    if (r.timestamp !== null && r.timestamp !== undefined) m.timestamp = String(r.timestamp)
    if (r.partition !== null && r.partition !== undefined) m.partition = r.partition
    return m
  })
  const results = await producer.send({ topic: args.topic, messages, acks: -1, compression, timeout: 30000 })
  await producer.disconnect()
  emit({ produced: messages.length, results: results.map(r => ({ partition: r.partition, errorCode: r.errorCode, baseOffset: r.baseOffset })) })
}

main().catch(e => fail(e && e.stack ? e.stack : e))
