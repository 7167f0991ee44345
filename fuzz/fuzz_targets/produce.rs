//! Fuzz target `produce` (structure-aware): an arbitrary batch and a decision per record go
//! through encrypt → encode → split → decode → decrypt with a fresh encryptor, which must give
//! back the input exactly. Oracle: `kapsule::fuzzing::produce::check` (stable fallback:
//! `fuzzing::tests::fuzz_fallback_produce`).
#![no_main]

#[path = "common/capped_alloc.rs"]
mod capped_alloc;

use bytes::Bytes;
use kapsule::kafka::records::{Compression, Record, RecordBatch, RecordHeader};
use libfuzzer_sys::arbitrary::{self, Arbitrary};

/// Records per batch are capped so one input stays fast to encrypt.
const MAX_RECORDS: usize = 64;

#[derive(Debug, Arbitrary)]
struct Input {
    base_offset: i64,
    partition_leader_epoch: i32,
    attributes: i16,
    codec: u8,
    last_offset_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<InputRecord>,
}

#[derive(Debug, Arbitrary)]
struct InputRecord {
    /// Decision for this record (`kapsule::fuzzing::produce::decision`).
    selector: u8,
    attributes: i8,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Input {
    fn into_batch(self) -> (RecordBatch, Vec<u8>) {
        let codec = Compression::from_id(self.codec % 5).expect("ids 0-4 exist");
        let mut selectors = Vec::new();
        let records = self
            .records
            .into_iter()
            .take(MAX_RECORDS)
            .map(|r| {
                selectors.push(r.selector);
                Record {
                    attributes: r.attributes,
                    timestamp_delta: r.timestamp_delta,
                    offset_delta: r.offset_delta,
                    key: r.key.map(Bytes::from),
                    value: r.value.map(Bytes::from),
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| RecordHeader {
                            key: Bytes::from(k),
                            value: v.map(Bytes::from),
                        })
                        .collect(),
                }
            })
            .collect();
        let batch = RecordBatch {
            base_offset: self.base_offset,
            partition_leader_epoch: self.partition_leader_epoch,
            attributes: codec.apply_to_attributes(self.attributes),
            last_offset_delta: self.last_offset_delta,
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records,
        };
        (batch, selectors)
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let (mut batch, selectors) = input.into_batch();
    kapsule::fuzzing::produce::prepare(&mut batch, &selectors);
    kapsule::fuzzing::produce::check(&batch, &selectors);
});
