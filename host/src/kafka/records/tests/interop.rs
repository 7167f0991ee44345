//! Interoperability with an independent implementation (kafka-protocol), both directions.

use bytes::{Bytes, BytesMut};

use super::*;

fn kp_record(i: i64) -> kafka_protocol::records::Record {
    kafka_protocol::records::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset: i,
        sequence: -1,
        timestamp: 1_700_000_000_000 + i,
        key: Some(Bytes::from(format!("k{i}"))),
        value: Some(Bytes::from(format!("value {i}"))),
        headers: Default::default(),
    }
}

fn kp_compression(c: Compression) -> kafka_protocol::records::Compression {
    use kafka_protocol::records::Compression as K;
    match c {
        Compression::None => K::None,
        Compression::Gzip => K::Gzip,
        Compression::Snappy => K::Snappy,
        Compression::Lz4 => K::Lz4,
        Compression::Zstd => K::Zstd,
    }
}

#[test]
fn decodes_batches_written_by_kafka_protocol() {
    use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions};
    let mut records: Vec<_> = (0..50).map(kp_record).collect();
    records[3].key = None;
    records[4].value = None;
    records[5]
        .headers
        .insert("h".into(), Some(Bytes::from_static(b"hv")));
    records[5].headers.insert("n".into(), None);
    for c in Compression::ALL {
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: kp_compression(c),
            },
        )
        .unwrap();
        let set = out.freeze();
        // kafka-protocol may cut the records into several batches; walk them all.
        let mut ours_all = Vec::new();
        for entry in split_record_set(&set) {
            let raw = entry.unwrap().as_batch().unwrap().clone();
            let batch = raw.decode().unwrap();
            assert_eq!(batch.compression().unwrap(), c);
            if c == Compression::None {
                assert_eq!(&encode(&batch), raw.bytes(), "byte-identical re-encode");
            }
            for r in batch.records.iter() {
                ours_all.push((
                    batch.base_offset + i64::from(r.offset_delta),
                    batch.base_timestamp + r.timestamp_delta,
                    r.clone(),
                ));
            }
        }
        assert_eq!(ours_all.len(), records.len(), "{c}");
        for ((offset, timestamp, ours), theirs) in ours_all.iter().zip(&records) {
            assert_eq!(*offset, theirs.offset);
            assert_eq!(*timestamp, theirs.timestamp);
            assert_eq!(ours.key, theirs.key);
            assert_eq!(ours.value, theirs.value);
            let hs: Vec<_> = theirs
                .headers
                .iter()
                .map(|(k, v)| RecordHeader {
                    key: Bytes::copy_from_slice(k.as_bytes()),
                    value: v.clone(),
                })
                .collect();
            assert_eq!(ours.headers, hs);
        }
    }
}

#[test]
fn kafka_protocol_decodes_batches_we_write() {
    use kafka_protocol::records::RecordBatchDecoder;
    for c in Compression::ALL {
        let batch = edge_batch(c);
        let mut bytes = encode(&batch);
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.version, 2);
        assert_eq!(set.compression as u8, c.id(), "{c}");
        assert_eq!(set.records.len(), batch.records.len());
        for (theirs, ours) in set.records.iter().zip(&batch.records) {
            assert_eq!(
                theirs.offset,
                batch.base_offset + i64::from(ours.offset_delta)
            );
            assert_eq!(
                theirs.timestamp,
                batch.base_timestamp + ours.timestamp_delta
            );
            assert_eq!(theirs.producer_id, batch.producer_id);
            assert_eq!(theirs.producer_epoch, batch.producer_epoch);
            assert!(theirs.transactional);
            assert_eq!(theirs.key, ours.key);
            assert_eq!(theirs.value, ours.value);
        }
    }
}
