#!/usr/bin/env node
// Consume records with kafkajs as a consumer-group member and print them with exact bytes.
// Usage: node kafkajs_consume.js --bootstrap HOST:PORT --topic T --group G --count N [--timeout SECONDS]
// Output: {"records": [...], "timed_out": bool}
'use strict'
const { Kafka, logLevel } = require('kafkajs')
const { tohex, parseArgs, headersToList, emit, fail } = require('./common')

async function main() {
  const args = parseArgs(process.argv.slice(2))
  if (!args.bootstrap || !args.topic || !args.group || !args.count) fail('need --bootstrap, --topic, --group, --count')
  const count = Number(args.count)
  const timeoutMs = Number(args.timeout || 60) * 1000
  const kafka = new Kafka({ clientId: 'kapsule-rig-kafkajs', brokers: [args.bootstrap], logLevel: logLevel.WARN })
  const consumer = kafka.consumer({ groupId: args.group, allowAutoTopicCreation: false, maxWaitTimeInMs: 500 })
  await consumer.connect()
  await consumer.subscribe({ topics: [args.topic], fromBeginning: true })
  const records = []
  let done
  const finished = new Promise(resolve => { done = resolve })
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      if (records.length >= count) return
      records.push({
        partition,
        offset: Number(message.offset),
        key: tohex(message.key),
        value: tohex(message.value),
        headers: headersToList(message.headers),
        timestamp: Number(message.timestamp),
      })
      if (records.length >= count) done(false)
    },
  })
  const timer = setTimeout(() => done(true), timeoutMs)
  const timedOut = await finished
  clearTimeout(timer)
  await consumer.disconnect()
  emit({ records, timed_out: timedOut })
}

main().catch(e => fail(e && e.stack ? e.stack : e))
