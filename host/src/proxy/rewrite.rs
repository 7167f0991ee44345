//! Responses that carry broker addresses or API versions, rewritten so clients only ever learn
//! Kapsule's own listeners and only the versions Kapsule can decode.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse,
    MetadataResponse, ProduceResponse,
};
use kafka_protocol::protocol::{Message, StrBytes, VersionRange};

/// Maps a broker (node id, real host, real port) to the address clients must use instead.
pub trait Advertiser {
    /// Returns the (host, port) Kapsule serves `node_id` on, binding a listener if needed.
    fn advertise(&self, node_id: i32, host: &str, port: i32) -> anyhow::Result<(StrBytes, i32)>;
}

/// Highest Produce version offered to clients (see [`supported_range`]).
pub const MAX_PRODUCE_VERSION: i16 = 8;
/// Highest Fetch version offered to clients (see [`supported_range`]).
pub const MAX_FETCH_VERSION: i16 = 11;

/// The version range Kapsule can handle for an API, or `None` if kafka-protocol does not know it.
///
/// APIs whose bodies Kapsule decodes are limited to what kafka-protocol decodes. Produce and Fetch
/// are further capped: v13+ carry topic ids only (encryption binds ciphertext to topic names),
/// and the flexible versions (Produce v9+, Fetch v12+) are not offered because brokers such as
/// tansu 0.6.0 put tagged fields into responses of versions whose schema does not define them
/// (e.g. `node_endpoints`, tag 0, in Fetch v12), which kafka-protocol refuses to decode. Produce
/// v8 and Fetch v11 carry everything clients need (idempotence, transactions, KIP-392 rack-aware
/// fetch) and every current client supports them.
pub fn supported_range(api_key: i16) -> Option<VersionRange> {
    let api = ApiKey::try_from(api_key).ok()?;
    let range = match api {
        ApiKey::Produce => {
            kafka_protocol::messages::ProduceRequest::VERSIONS.intersect(&VersionRange {
                min: 0,
                max: MAX_PRODUCE_VERSION,
            })
        }
        ApiKey::Fetch => {
            kafka_protocol::messages::FetchRequest::VERSIONS.intersect(&VersionRange {
                min: 0,
                max: MAX_FETCH_VERSION,
            })
        }
        ApiKey::Metadata => MetadataResponse::VERSIONS,
        ApiKey::FindCoordinator => FindCoordinatorResponse::VERSIONS,
        ApiKey::DescribeCluster => DescribeClusterResponse::VERSIONS,
        ApiKey::ApiVersions => ApiVersionsResponse::VERSIONS,
        // Relayed untouched: any version the broker offers within what kafka-protocol knows
        // (so the proxy can at least parse its header).
        other => other.valid_versions(),
    };
    Some(range)
}

/// Intersects the broker's advertised ranges with [`supported_range`]; drops unknown API keys
/// and APIs whose intersection is empty.
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

/// Rewrites the KIP-951 `node_endpoints` of a Produce response.
pub fn rewrite_produce_endpoints(
    resp: &mut ProduceResponse,
    adv: &dyn Advertiser,
) -> anyhow::Result<()> {
    for e in &mut resp.node_endpoints {
        point_at_kapsule(adv, e.node_id.0, &mut e.host, &mut e.port)?;
    }
    Ok(())
}

/// Rewrites the KIP-951 `node_endpoints` of a Fetch response.
pub fn rewrite_fetch_endpoints(
    resp: &mut FetchResponse,
    adv: &dyn Advertiser,
) -> anyhow::Result<()> {
    for e in &mut resp.node_endpoints {
        point_at_kapsule(adv, e.node_id.0, &mut e.host, &mut e.port)?;
    }
    Ok(())
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
        assert_eq!(got, vec![(0, 3, 8), (1, 4, 11), (3, 0, 12)]);
    }

    #[test]
    fn kip511_fallback_offers_only_api_versions() {
        let r = unsupported_api_versions_response();
        assert_eq!(r.error_code, 35);
        assert_eq!(r.api_keys.len(), 1);
        assert_eq!(r.api_keys[0].api_key, 18);
    }
}
