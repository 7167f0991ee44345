//! A bounded map keyed by (topic, client principal) whose lookups allocate nothing.
//!
//! Plans and reveals are cached per topic and principal for one module version. A lookup runs on
//! every produce batch and fetch, so it takes `&str` and `Option<&Principal>` as they are and
//! never builds an owned key. The map holds at most `max` entries: inserting beyond that clears it
//! (the next calls refill it), which keeps memory bounded whatever topic and principal names
//! clients send.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::principal::{AuthMechanism, Principal};

/// Values of one topic: the unauthenticated one and one per principal.
#[derive(Debug)]
struct PerTopic<V> {
    anonymous: Option<V>,
    /// By principal name; the mechanism tells principals of the same name apart.
    named: HashMap<String, Vec<(AuthMechanism, V)>>,
}

impl<V> Default for PerTopic<V> {
    fn default() -> Self {
        Self {
            anonymous: None,
            named: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct State<V> {
    topics: HashMap<String, PerTopic<V>>,
    len: usize,
}

/// A bounded (topic, principal) → `V` cache.
#[derive(Debug)]
pub(super) struct TopicPrincipalMap<V> {
    state: RwLock<State<V>>,
    max: usize,
}

impl<V: Clone> TopicPrincipalMap<V> {
    /// An empty map holding at most `max` entries.
    pub(super) fn new(max: usize) -> Self {
        Self {
            state: RwLock::new(State {
                topics: HashMap::new(),
                len: 0,
            }),
            max: max.max(1),
        }
    }

    /// The value cached for (`topic`, `principal`).
    pub(super) fn get(&self, topic: &str, principal: Option<&Principal>) -> Option<V> {
        let st = self.state.read();
        let t = st.topics.get(topic)?;
        match principal {
            None => t.anonymous.clone(),
            Some(p) => t
                .named
                .get(p.name())?
                .iter()
                .find(|(m, _)| *m == p.mechanism())
                .map(|(_, v)| v.clone()),
        }
    }

    /// Caches `value` for (`topic`, `principal`), clearing the map first if it is full.
    pub(super) fn insert(&self, topic: &str, principal: Option<&Principal>, value: V) {
        let mut st = self.state.write();
        if st.len >= self.max {
            st.topics.clear();
            st.len = 0;
        }
        let t = st.topics.entry(topic.to_string()).or_default();
        let added = match principal {
            None => t.anonymous.replace(value).is_none(),
            Some(p) => {
                let list = t.named.entry(p.name().to_string()).or_default();
                match list.iter_mut().find(|(m, _)| *m == p.mechanism()) {
                    Some(slot) => {
                        slot.1 = value;
                        false
                    }
                    None => {
                        list.push((p.mechanism(), value));
                        true
                    }
                }
            }
        };
        if added {
            st.len += 1;
        }
    }

    /// Forgets every entry.
    pub(super) fn clear(&self) {
        let mut st = self.state.write();
        st.topics.clear();
        st.len = 0;
    }

    /// Entries cached now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.state.read().len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_told_apart_by_name_and_mechanism() {
        let m = TopicPrincipalMap::new(10);
        let alice = Principal::new("alice", AuthMechanism::SaslPlain);
        let alice_tls = Principal::new("alice", AuthMechanism::TlsClientCertificate);
        m.insert("t", None, 0);
        m.insert("t", Some(&alice), 1);
        m.insert("t", Some(&alice_tls), 2);
        assert_eq!(m.get("t", None), Some(0));
        assert_eq!(m.get("t", Some(&alice)), Some(1));
        assert_eq!(m.get("t", Some(&alice_tls)), Some(2));
        assert_eq!(m.get("u", Some(&alice)), None);
        m.insert("t", Some(&alice), 3);
        assert_eq!(m.get("t", Some(&alice)), Some(3));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn the_map_never_holds_more_than_its_bound() {
        let m = TopicPrincipalMap::new(4);
        for i in 0..100 {
            let p = Principal::new(format!("p{i}"), AuthMechanism::SaslPlain);
            m.insert("t", Some(&p), i);
            assert!(m.len() <= 4, "{}", m.len());
            assert_eq!(m.get("t", Some(&p)), Some(i));
        }
    }
}
