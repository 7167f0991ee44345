//! Responses that carry broker addresses or API versions, rewritten so clients only ever learn
//! Kapsule's own listeners and only the versions Kapsule can decode.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse,
    MetadataResponse, ProduceRequest, ProduceResponse, SaslHandshakeRequest,
    ShareAcknowledgeResponse, ShareFetchResponse,
};
use kafka_protocol::protocol::{Message, StrBytes, VersionRange};

/// Maps a broker (node id, real host, real port) to the address clients must use instead.
pub trait Advertiser {
    /// Returns the (host, port) Kapsule serves `node_id` on, binding a listener if needed.
    fn advertise(&self, node_id: i32, host: &str, port: i32) -> anyhow::Result<(StrBytes, i32)>;
}

/// First Produce version that names topics by id only (KIP-516). Kapsule resolves the id to the
/// topic's name from Metadata the broker sent ([`super::topic_ids::TopicIds`]), so ciphertext stays
/// bound to the name; an id it cannot resolve is refused with UNKNOWN_TOPIC_ID, never relayed.
pub const PRODUCE_TOPIC_ID_VERSION: i16 = 13;
/// First Fetch version that names topics by id only (KIP-516); resolved as for Produce.
pub const FETCH_TOPIC_ID_VERSION: i16 = 13;
/// First flexible Produce version.
pub const PRODUCE_FLEXIBLE_VERSION: i16 = 9;
/// First flexible Fetch version.
pub const FETCH_FLEXIBLE_VERSION: i16 = 12;
/// First Produce version with which a transactional producer may rely on the broker adding
/// partitions to the transaction (KIP-890 part 2, `transaction.version` 2).
pub const PRODUCE_TRANSACTION_V2_VERSION: i16 = 12;
/// Highest Produce version offered to clients: the highest kafka-protocol decodes.
pub const MAX_PRODUCE_VERSION: i16 = ProduceRequest::VERSIONS.max;
/// Highest Fetch version offered to clients: the highest kafka-protocol decodes.
pub const MAX_FETCH_VERSION: i16 = kafka_protocol::messages::FetchRequest::VERSIONS.max;
/// Name of the finalized feature that switches transactional producers to KIP-890 part 2.
const TRANSACTION_VERSION_FEATURE: &str = "transaction.version";

/// APIs that carry records (or whole other requests) past the record stage: never offered in
/// ApiVersions and refused when a client sends them anyway.
///
/// FetchSnapshot returns raw log bytes; Envelope wraps any request (a Produce included).
/// ShareFetch (KIP-932 share groups) is not among them: its records go through the record stage
/// like a Fetch's ([`crate::proxy::records::RecordStage::stage_share_fetch`]).
pub const UNTRANSFORMED_APIS: [ApiKey; 2] = [ApiKey::FetchSnapshot, ApiKey::Envelope];

/// The version range Kapsule can handle for an API, or `None` if Kapsule does not offer it
/// (unknown to kafka-protocol, or one of [`UNTRANSFORMED_APIS`]).
///
/// APIs whose bodies Kapsule decodes are limited to what kafka-protocol decodes: for Produce and
/// Fetch every version, flexible and topic-id ones included (topic ids are resolved to names, see
/// [`PRODUCE_TOPIC_ID_VERSION`]); ShareFetch and ShareAcknowledge (records decrypted, node
/// endpoints rewritten) likewise. Brokers that put tagged fields into responses of versions whose
/// schema does not define them (tansu 0.6 sends `node_endpoints`, tag 0, in Fetch v12) are
/// tolerated where the response is decoded (`kafka::frame::decode_fetch_response`), so real
/// brokers are never capped for another broker's quirk.
pub fn supported_range(api_key: i16) -> Option<VersionRange> {
    let api = ApiKey::try_from(api_key).ok()?;
    if UNTRANSFORMED_APIS.contains(&api) {
        return None;
    }
    let range = match api {
        ApiKey::Produce => ProduceRequest::VERSIONS,
        ApiKey::Fetch => kafka_protocol::messages::FetchRequest::VERSIONS,
        ApiKey::Metadata => MetadataResponse::VERSIONS,
        ApiKey::FindCoordinator => FindCoordinatorResponse::VERSIONS,
        ApiKey::DescribeCluster => DescribeClusterResponse::VERSIONS,
        ApiKey::ShareFetch => ShareFetchResponse::VERSIONS,
        ApiKey::ShareAcknowledge => ShareAcknowledgeResponse::VERSIONS,
        ApiKey::ApiVersions => ApiVersionsResponse::VERSIONS,
        // v0 is followed by unframed SASL tokens the proxy cannot follow (see `sasl`).
        ApiKey::SaslHandshake => SaslHandshakeRequest::VERSIONS.intersect(&VersionRange {
            min: super::sasl::MIN_HANDSHAKE_VERSION,
            max: i16::MAX,
        }),
        // Relayed untouched: any version the broker offers within what kafka-protocol knows
        // (so the proxy can at least parse its header).
        other => other.valid_versions(),
    };
    Some(range)
}

/// A request Kapsule refuses because it never advertised that API at that version.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{} v{version} is not offered by Kapsule ({})", api_label(*api_key), offered(*advertised))]
pub struct UnsupportedRequest {
    /// Raw API key of the request.
    pub api_key: i16,
    /// Version the client chose.
    pub version: i16,
    /// What Kapsule advertises for this API (`None`: the API is not offered at all).
    pub advertised: Option<VersionRange>,
}

fn api_label(api_key: i16) -> String {
    match ApiKey::try_from(api_key) {
        Ok(api) => format!("{api:?}"),
        Err(_) => format!("API key {api_key}"),
    }
}

fn offered(range: Option<VersionRange>) -> String {
    match range {
        Some(r) => format!("it offers v{}-v{}", r.min, r.max),
        None => "the API is not offered".to_owned(),
    }
}

/// Checks a request's API and version against what Kapsule advertises ([`supported_range`]).
///
/// Called for every request before anything is forwarded; a refused request must never reach the
/// broker. ApiVersions is the exception KIP-511 makes: a newer version is answered by
/// [`unsupported_api_versions_response`], so it passes here.
pub fn check_request(api_key: i16, version: i16) -> Result<(), UnsupportedRequest> {
    let advertised = supported_range(api_key);
    match advertised {
        Some(_) if api_key == ApiKey::ApiVersions as i16 => Ok(()),
        Some(r) if (r.min..=r.max).contains(&version) => Ok(()),
        _ => Err(UnsupportedRequest {
            api_key,
            version,
            advertised,
        }),
    }
}

/// A Produce response giving every partition of `request` the same error and message (topics are
/// echoed by name and, from v13, by id). Used for requests refused or timed out in the proxy.
pub fn produce_error_response(
    request: &ProduceRequest,
    error: ResponseError,
    message: &str,
) -> ProduceResponse {
    let message = StrBytes::from_string(message.to_owned());
    let responses = request
        .topic_data
        .iter()
        .map(|t| {
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_partition_responses(
                    t.partition_data
                        .iter()
                        .map(|p| {
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(error.code())
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1)
                                .with_error_message(Some(message.clone()))
                        })
                        .collect(),
                )
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

/// A Fetch response (v7+) refusing the whole request with UNSUPPORTED_VERSION and no records.
pub fn fetch_unsupported_response() -> FetchResponse {
    FetchResponse::default().with_error_code(ResponseError::UnsupportedVersion.code())
}

/// Intersects the broker's advertised ranges with [`supported_range`]; drops unknown API keys
/// and APIs whose intersection is empty.
///
/// A transactional producer that sees `transaction.version` 2 finalized stops sending
/// AddPartitionsToTxn and relies on Produce v12+ adding partitions (KIP-890). Should the Produce
/// range offered end below v12, the finalized level is lowered to 1, so such a client keeps
/// adding partitions itself instead of failing every transactional send.
pub fn rewrite_api_versions(resp: &mut ApiVersionsResponse) {
    resp.api_keys
        .retain_mut(|v| match supported_range(v.api_key) {
            Some(ours) => {
                let both = ours.intersect(&VersionRange {
                    min: v.min_version,
                    max: v.max_version,
                });
                v.min_version = both.min;
                v.max_version = both.max;
                !both.is_empty()
            }
            None => false,
        });
    let produce_max = resp
        .api_keys
        .iter()
        .find(|v| v.api_key == ApiKey::Produce as i16)
        .map(|v| v.max_version);
    if produce_max.is_none_or(|max| max < PRODUCE_TRANSACTION_V2_VERSION) {
        for f in &mut resp.finalized_features {
            if f.name.as_str() == TRANSACTION_VERSION_FEATURE && f.max_version_level > 1 {
                f.max_version_level = 1;
                f.min_version_level = f.min_version_level.min(1);
            }
        }
    }
}

/// The KIP-511 answer to an ApiVersions request newer than Kapsule supports: a v0 response with
/// UNSUPPORTED_VERSION and the ApiVersions range, so the client retries with a version we know.
pub fn unsupported_api_versions_response() -> ApiVersionsResponse {
    let range = ApiVersionsResponse::VERSIONS;
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::ApiVersions as i16)
            .with_min_version(range.min)
            .with_max_version(range.max)])
}

/// Replaces one broker address (`host`, `port` of `node_id`) with the Kapsule listener for it.
fn point_at_kapsule(
    adv: &dyn Advertiser,
    node_id: i32,
    host: &mut StrBytes,
    port: &mut i32,
) -> anyhow::Result<()> {
    let (h, p) = adv.advertise(node_id, host.as_str(), *port)?;
    *host = h;
    *port = p;
    Ok(())
}

/// Rewrites every broker in a Metadata response.
pub fn rewrite_metadata(resp: &mut MetadataResponse, adv: &dyn Advertiser) -> anyhow::Result<()> {
    for b in &mut resp.brokers {
        point_at_kapsule(adv, b.node_id.0, &mut b.host, &mut b.port)?;
    }
    Ok(())
}

/// Rewrites the coordinator address(es): the v0–v3 single form and the v4+ list.
pub fn rewrite_find_coordinator(
    resp: &mut FindCoordinatorResponse,
    adv: &dyn Advertiser,
) -> anyhow::Result<()> {
    if resp.node_id.0 >= 0 && !resp.host.is_empty() {
        point_at_kapsule(adv, resp.node_id.0, &mut resp.host, &mut resp.port)?;
    }
    for c in &mut resp.coordinators {
        if c.node_id.0 >= 0 && !c.host.is_empty() {
            point_at_kapsule(adv, c.node_id.0, &mut c.host, &mut c.port)?;
        }
    }
    Ok(())
}

/// Rewrites every broker in a DescribeCluster response.
pub fn rewrite_describe_cluster(
    resp: &mut DescribeClusterResponse,
    adv: &dyn Advertiser,
) -> anyhow::Result<()> {
    for b in &mut resp.brokers {
        point_at_kapsule(adv, b.broker_id.0, &mut b.host, &mut b.port)?;
    }
    Ok(())
}

/// Points every KIP-951 leader endpoint in `endpoints` at Kapsule; `fields` gives an endpoint's
/// node id, host and port (each response type has its own endpoint struct).
fn point_endpoints_at_kapsule<E>(
    endpoints: &mut [E],
    adv: &dyn Advertiser,
    fields: impl Fn(&mut E) -> (i32, &mut StrBytes, &mut i32),
) -> anyhow::Result<()> {
    for e in endpoints {
        let (node_id, host, port) = fields(e);
        point_at_kapsule(adv, node_id, host, port)?;
    }
    Ok(())
}

/// Rewrites the KIP-951 `node_endpoints` of a Produce response.
pub fn rewrite_produce_endpoints(
    resp: &mut ProduceResponse,
    adv: &dyn Advertiser,
) -> anyhow::Result<()> {
    point_endpoints_at_kapsule(&mut resp.node_endpoints, adv, |e| {
        (e.node_id.0, &mut e.host, &mut e.port)
    })
}

/// Rewrites the KIP-951 `node_endpoints` of a Fetch response.
pub fn rewrite_fetch_endpoints(
    resp: &mut FetchResponse,
    adv: &dyn Advertiser,
) -> anyhow::Result<()> {
    point_endpoints_at_kapsule(&mut resp.node_endpoints, adv, |e| {
        (e.node_id.0, &mut e.host, &mut e.port)
    })
}

/// Rewrites the `node_endpoints` of a ShareFetch response (leaders a share consumer moves to).
pub fn rewrite_share_fetch_endpoints(
    resp: &mut ShareFetchResponse,
    adv: &dyn Advertiser,
) -> anyhow::Result<()> {
    point_endpoints_at_kapsule(&mut resp.node_endpoints, adv, |e| {
        (e.node_id.0, &mut e.host, &mut e.port)
    })
}

/// Rewrites the `node_endpoints` of a ShareAcknowledge response.
pub fn rewrite_share_acknowledge_endpoints(
    resp: &mut ShareAcknowledgeResponse,
    adv: &dyn Advertiser,
) -> anyhow::Result<()> {
    point_endpoints_at_kapsule(&mut resp.node_endpoints, adv, |e| {
        (e.node_id.0, &mut e.host, &mut e.port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::BrokerId;
    use parking_lot::Mutex;
    use std::collections::BTreeMap;

    /// Records which brokers were advertised and maps node n to proxy:20000+n.
    #[derive(Default)]
    struct FakeAdvertiser(Mutex<BTreeMap<i32, (String, i32)>>);
    impl Advertiser for FakeAdvertiser {
        fn advertise(
            &self,
            node_id: i32,
            host: &str,
            port: i32,
        ) -> anyhow::Result<(StrBytes, i32)> {
            self.0.lock().insert(node_id, (host.to_string(), port));
            Ok((StrBytes::from_static_str("proxy"), 20000 + node_id))
        }
    }

    fn broker(id: i32, host: &'static str, port: i32) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_static_str(host))
            .with_port(port)
    }

    /// KIP-951: a response that names a partition's new leader carries its endpoint, and a
    /// client connects there next. Every such endpoint (Produce, Fetch, and the share-group
    /// ShareFetch and ShareAcknowledge) points at Kapsule, so no client is ever sent around it.
    #[test]
    fn leader_endpoints_in_produce_fetch_and_share_responses_point_at_kapsule() {
        use kafka_protocol::messages::{
            fetch_response, produce_response, share_acknowledge_response, share_fetch_response,
        };
        let adv = FakeAdvertiser::default();
        let (host, port) = (StrBytes::from_static_str("kafka-2"), 9093);
        let mut produce = ProduceResponse::default().with_node_endpoints(vec![
            produce_response::NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(host.clone())
                .with_port(port),
        ]);
        rewrite_produce_endpoints(&mut produce, &adv).unwrap();
        let mut fetch = FetchResponse::default().with_node_endpoints(vec![
            fetch_response::NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(host.clone())
                .with_port(port),
        ]);
        rewrite_fetch_endpoints(&mut fetch, &adv).unwrap();
        let mut share = ShareFetchResponse::default().with_node_endpoints(vec![
            share_fetch_response::NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(host.clone())
                .with_port(port),
        ]);
        rewrite_share_fetch_endpoints(&mut share, &adv).unwrap();
        let mut ack = ShareAcknowledgeResponse::default().with_node_endpoints(vec![
            share_acknowledge_response::NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(host.clone())
                .with_port(port),
        ]);
        rewrite_share_acknowledge_endpoints(&mut ack, &adv).unwrap();
        let rewritten = [
            (
                &produce.node_endpoints[0].host,
                produce.node_endpoints[0].port,
            ),
            (&fetch.node_endpoints[0].host, fetch.node_endpoints[0].port),
            (&share.node_endpoints[0].host, share.node_endpoints[0].port),
            (&ack.node_endpoints[0].host, ack.node_endpoints[0].port),
        ];
        for (i, (h, p)) in rewritten.into_iter().enumerate() {
            assert_eq!((h.as_str(), p), ("proxy", 20002), "response {i}");
        }
        assert_eq!(
            adv.0.lock().get(&2),
            Some(&("kafka-2".to_owned(), 9093)),
            "the real endpoint is what Kapsule binds a listener for"
        );
    }

    #[test]
    fn multi_node_metadata_points_every_broker_at_kapsule() {
        let adv = FakeAdvertiser::default();
        let mut resp = MetadataResponse::default().with_brokers(vec![
            broker(1, "kafka-1", 9092),
            broker(2, "kafka-2", 9093),
            broker(3, "kafka-3", 9094),
        ]);
        rewrite_metadata(&mut resp, &adv).unwrap();
        for b in &resp.brokers {
            assert_eq!(b.host.as_str(), "proxy");
            assert_eq!(b.port, 20000 + b.node_id.0);
        }
        let seen = adv.0.lock();
        assert_eq!(seen[&2], ("kafka-2".to_string(), 9093));
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn find_coordinator_single_and_list_forms_are_rewritten() {
        let adv = FakeAdvertiser::default();
        let mut v3 = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(2))
            .with_host(StrBytes::from_static_str("kafka-2"))
            .with_port(9093);
        rewrite_find_coordinator(&mut v3, &adv).unwrap();
        assert_eq!((v3.host.as_str(), v3.port), ("proxy", 20002));

        let mut v4 = FindCoordinatorResponse::default().with_coordinators(vec![
            Coordinator::default()
                .with_node_id(BrokerId(3))
                .with_host(StrBytes::from_static_str("kafka-3"))
                .with_port(9094),
            Coordinator::default()
                .with_node_id(BrokerId(-1))
                .with_error_code(15),
        ]);
        rewrite_find_coordinator(&mut v4, &adv).unwrap();
        assert_eq!(
            (v4.coordinators[0].host.as_str(), v4.coordinators[0].port),
            ("proxy", 20003)
        );
        assert_eq!(
            v4.coordinators[1].host.as_str(),
            "",
            "error entries stay untouched"
        );
    }

    #[test]
    fn api_versions_are_intersected_and_unknown_keys_dropped() {
        let mut resp = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(0)
                .with_min_version(0)
                .with_max_version(13),
            ApiVersion::default()
                .with_api_key(1)
                .with_min_version(0)
                .with_max_version(17),
            ApiVersion::default()
                .with_api_key(3)
                .with_min_version(0)
                .with_max_version(12),
            ApiVersion::default()
                .with_api_key(9999)
                .with_min_version(0)
                .with_max_version(3),
        ]);
        rewrite_api_versions(&mut resp);
        let got: Vec<_> = resp
            .api_keys
            .iter()
            .map(|v| (v.api_key, v.min_version, v.max_version))
            .collect();
        // Every Produce and Fetch version kafka-protocol decodes, flexible and topic-id ones too.
        assert_eq!(got, vec![(0, 3, 13), (1, 4, 17), (3, 0, 12)]);
    }

    #[test]
    fn untransformed_apis_are_dropped_from_api_versions_and_share_groups_offered() {
        let mut resp = ApiVersionsResponse::default().with_api_keys(
            [0i16, 1, 58, 59, 76, 77, 78, 79, 90]
                .into_iter()
                .map(|k| {
                    ApiVersion::default()
                        .with_api_key(k)
                        .with_min_version(0)
                        .with_max_version(20)
                })
                .collect(),
        );
        rewrite_api_versions(&mut resp);
        let keys: Vec<i16> = resp.api_keys.iter().map(|v| v.api_key).collect();
        // 58 Envelope and 59 FetchSnapshot are not offered; the share-group APIs (76-79, 90) are.
        assert_eq!(keys, vec![0, 1, 76, 77, 78, 79, 90], "{keys:?}");
    }

    #[test]
    fn requests_above_the_advertised_range_are_refused() {
        for (api, v) in [
            (0, PRODUCE_FLEXIBLE_VERSION),
            (0, PRODUCE_TRANSACTION_V2_VERSION),
            (0, PRODUCE_TOPIC_ID_VERSION),
            (0, MAX_PRODUCE_VERSION),
            (1, FETCH_FLEXIBLE_VERSION),
            (1, FETCH_TOPIC_ID_VERSION),
            (1, MAX_FETCH_VERSION),
        ] {
            assert!(check_request(api, v).is_ok(), "api {api} v{v}");
        }
        for (api, v) in [
            (0, MAX_PRODUCE_VERSION + 1),
            (1, MAX_FETCH_VERSION + 1),
            (3, 99),
            (58, 0),
            (59, 0),
            (9999, 0),
        ] {
            let e = check_request(api, v).unwrap_err();
            assert_eq!((e.api_key, e.version), (api, v));
        }
        let e = check_request(0, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Produce v2 is not offered by Kapsule (it offers v3-v{MAX_PRODUCE_VERSION})")
        );
        assert_eq!(
            check_request(59, 1).unwrap_err().to_string(),
            "FetchSnapshot v1 is not offered by Kapsule (the API is not offered)"
        );
        // Share groups: ShareFetch at the versions kafka-protocol decodes.
        assert!(check_request(78, ShareFetchResponse::VERSIONS.max).is_ok());
        assert!(check_request(78, ShareFetchResponse::VERSIONS.max + 1).is_err());
        assert!(check_request(76, 1).is_ok());
        // KIP-511: a newer ApiVersions is answered, not refused.
        assert!(check_request(18, 99).is_ok());
    }

    #[test]
    fn produce_error_response_covers_every_partition_by_name_and_id() {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::protocol::Encodable;
        let req = ProduceRequest::default().with_topic_data(vec![TopicProduceData::default()
            .with_name(kafka_protocol::messages::TopicName(
                StrBytes::from_static_str("t"),
            ))
            .with_partition_data(vec![
                PartitionProduceData::default().with_index(0),
                PartitionProduceData::default().with_index(3),
            ])]);
        let resp = produce_error_response(&req, ResponseError::UnsupportedVersion, "no");
        let t = &resp.responses[0];
        assert_eq!(
            (t.name.as_str(), t.topic_id),
            ("t", req.topic_data[0].topic_id)
        );
        let got: Vec<_> = t
            .partition_responses
            .iter()
            .map(|p| (p.index, p.error_code))
            .collect();
        assert_eq!(got, vec![(0, 35), (3, 35)]);
        // Encodable at the refused version itself, so the client can read the error.
        let mut buf = bytes::BytesMut::new();
        resp.encode(&mut buf, PRODUCE_TOPIC_ID_VERSION).unwrap();
    }

    fn api_versions_with_transaction_version(produce_max: i16, level: i16) -> ApiVersionsResponse {
        use kafka_protocol::messages::api_versions_response::FinalizedFeatureKey;
        ApiVersionsResponse::default()
            .with_api_keys(vec![ApiVersion::default()
                .with_api_key(0)
                .with_min_version(3)
                .with_max_version(produce_max)])
            .with_finalized_features(vec![
                FinalizedFeatureKey::default()
                    .with_name(StrBytes::from_static_str("transaction.version"))
                    .with_min_version_level(level)
                    .with_max_version_level(level),
                FinalizedFeatureKey::default()
                    .with_name(StrBytes::from_static_str("metadata.version"))
                    .with_min_version_level(27)
                    .with_max_version_level(27),
            ])
    }

    #[test]
    fn transaction_version_2_is_kept_when_produce_v12_is_offered() {
        let mut resp = api_versions_with_transaction_version(13, 2);
        rewrite_api_versions(&mut resp);
        assert_eq!(resp.api_keys[0].max_version, 13);
        assert_eq!(resp.finalized_features[0].max_version_level, 2);
    }

    #[test]
    fn a_produce_range_below_v12_lowers_transaction_version_so_tv2_clients_add_partitions() {
        // A broker offering Produce up to v11 with transaction.version 2 finalized: a client
        // trusting the feature would skip AddPartitionsToTxn and need Produce v12, which it
        // cannot use; at level 1 it adds partitions itself.
        let mut resp = api_versions_with_transaction_version(11, 2);
        rewrite_api_versions(&mut resp);
        let tv = &resp.finalized_features[0];
        assert_eq!((tv.min_version_level, tv.max_version_level), (1, 1));
        assert_eq!(
            resp.finalized_features[1].max_version_level, 27,
            "other features untouched"
        );
    }

    #[test]
    fn kip511_fallback_offers_only_api_versions() {
        let r = unsupported_api_versions_response();
        assert_eq!(r.error_code, 35);
        assert_eq!(r.api_keys.len(), 1);
        assert_eq!(r.api_keys[0].api_key, 18);
    }
}
