//! Topic ids (KIP-516) learned from the broker's own responses.
//!
//! Produce v13+ and Fetch v13+ name topics by id only, while Kapsule binds every ciphertext to
//! the topic's *name* (and policies are written against names). Ids are therefore resolved to
//! names from what the broker itself said: every Metadata response that passes through Kapsule
//! (Metadata v10+ carries both) is read into one process-wide table. A client cannot add to it:
//! only broker responses are learned from. An id that is not in the table is never relayed
//! unencrypted: the partitions naming it are answered UNKNOWN_TOPIC_ID, which makes every client
//! refresh its metadata (through Kapsule, which then learns the id) and retry.

use std::collections::HashMap;

use kafka_protocol::messages::{MetadataResponse, TopicName};
use parking_lot::RwLock;
use uuid::Uuid;

/// Most ids remembered; past this the table starts again from the next Metadata response (ids
/// of deleted topics would otherwise accumulate forever). Far above any real cluster's topics.
const MAX_TOPIC_IDS: usize = 1 << 20;

/// The id → name table of the upstream cluster.
#[derive(Debug, Default)]
pub struct TopicIds {
    names: RwLock<HashMap<Uuid, TopicName>>,
}

impl TopicIds {
    /// Remembers every (id, name) pair of a Metadata response. Entries with a nil id (versions
    /// before v10, topics in error) or no name are skipped.
    pub fn learn_metadata(&self, response: &MetadataResponse) {
        let pairs: Vec<_> = response
            .topics
            .iter()
            .filter_map(|t| Some((t.topic_id, t.name.clone()?)))
            .filter(|(id, name)| !id.is_nil() && !name.is_empty())
            .collect();
        if pairs.is_empty() {
            return;
        }
        {
            // Most responses name topics already known: check under the read lock first.
            let names = self.names.read();
            if pairs.iter().all(|(id, name)| names.get(id) == Some(name)) {
                return;
            }
        }
        let mut names = self.names.write();
        if names.len() + pairs.len() > MAX_TOPIC_IDS {
            names.clear();
        }
        names.extend(pairs);
    }

    /// The name of the topic with this id, if the broker named it in a Metadata response.
    pub fn name(&self, id: Uuid) -> Option<TopicName> {
        self.names.read().get(&id).cloned()
    }

    /// How many ids are known.
    pub fn len(&self) -> usize {
        self.names.read().len()
    }

    /// True when no id is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
    use kafka_protocol::protocol::StrBytes;

    fn topic(id: u128, name: &'static str) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_topic_id(Uuid::from_u128(id))
            .with_name(Some(TopicName(StrBytes::from_static_str(name))))
    }

    #[test]
    fn ids_are_learned_from_metadata_and_nil_or_nameless_entries_are_skipped() {
        let ids = TopicIds::default();
        let response = MetadataResponse::default().with_topics(vec![
            topic(1, "payments"),
            topic(0, "no-id"),
            MetadataResponseTopic::default().with_topic_id(Uuid::from_u128(3)),
        ]);
        ids.learn_metadata(&response);
        assert_eq!(ids.name(Uuid::from_u128(1)).unwrap().as_str(), "payments");
        assert_eq!(ids.name(Uuid::from_u128(3)), None);
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn a_recreated_topic_gets_its_new_id_and_the_old_one_still_names_it() {
        let ids = TopicIds::default();
        ids.learn_metadata(&MetadataResponse::default().with_topics(vec![topic(1, "t")]));
        ids.learn_metadata(&MetadataResponse::default().with_topics(vec![topic(2, "t")]));
        assert_eq!(ids.name(Uuid::from_u128(1)).unwrap().as_str(), "t");
        assert_eq!(ids.name(Uuid::from_u128(2)).unwrap().as_str(), "t");
    }
}
