//! Kafka plumbing shared by the worker and the commands: client configs with
//! the operator's pass-through settings, and topic creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

use crate::runtime::config::KafkaSettings;

/// Base config for every client: brokers, then `[kafka.client]` verbatim, so
/// an operator's security and tuning settings reach every connection.
pub(crate) fn client_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    c.set("client.id", concat!("hookd/", env!("CARGO_PKG_VERSION")));
    overlay(c, &k.client)
}

/// Consumer of the events topic. Offsets are stored by hookd only once an
/// event is completely handled (`enable.auto.offset.store=false`) and
/// committed by hookd from that store every second and on revocation
/// (`enable.auto.commit=false`: librdkafka's timer skips its commit while
/// the group rebalances, and a fleet that keeps rebalancing then commits
/// nothing for as long, so a killed worker's successor redoes all of it).
///
/// Group settings for a fleet: partitions move incrementally
/// (`cooperative-sticky`: a rebalance takes from a worker only the
/// partitions that move, so work in flight elsewhere is not redone), and a
/// worker that died is noticed after 10 s rather than librdkafka's 45 s (its
/// partitions stand still until then).
pub(crate) fn consumer_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("group.id", &k.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    if !k.instance_id.is_empty() {
        c.set("group.instance.id", &k.instance_id);
    }
    overlay(merge(c, client_config(k)), &k.consumer)
}

/// Producer for the dead-letter, retry and response topics: idempotent,
/// acknowledged by all in-sync replicas.
pub fn producer_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    overlay(merge(c, client_config(k)), &k.producer)
}

/// `base` with `overrides` laid over it: the operator's settings win.
fn merge(base: ClientConfig, overrides: ClientConfig) -> ClientConfig {
    overlay(base, overrides.config_map())
}

fn overlay<'a>(
    mut base: ClientConfig,
    settings: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> ClientConfig {
    for (key, value) in settings {
        base.set(key, value);
    }
    base
}

/// Creates `topics` that do not exist yet, with `topic_partitions` each;
/// existing ones are left alone.
pub(crate) async fn ensure_topics(k: &KafkaSettings, topics: &[&str]) -> Result<(), KafkaError> {
    let specs: Vec<TopicSpec<'_>> = topics
        .iter()
        .map(|name| TopicSpec {
            name,
            partitions: k.topic_partitions,
            configs: &[],
        })
        .collect();
    ensure_topic_specs(k, &specs).await
}

/// A topic to create: its partition count and topic-level configs.
pub(crate) struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub configs: &'a [(&'a str, &'a str)],
}

/// Creates the topics of `specs` that do not exist yet.
pub(crate) async fn ensure_topic_specs(
    k: &KafkaSettings,
    specs: &[TopicSpec<'_>],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(k).create()?;
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                NewTopic::new(
                    t.name,
                    t.partitions,
                    TopicReplication::Fixed(k.topic_replication),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic, error = %code, "cannot create topic");
                })
            }
        }
    }
    Ok(())
}

/// The stats and log topics: plain retention long enough for the api to
/// rebuild 31 days of history after a restart.
pub(crate) fn traffic_topics(k: &KafkaSettings) -> [TopicSpec<'_>; 2] {
    const RETENTION: &[(&str, &str)] = &[("retention.ms", "2678400000")];
    [
        TopicSpec {
            name: &k.stats_topic,
            partitions: k.topic_partitions,
            configs: RETENTION,
        },
        TopicSpec {
            name: &k.log_topic,
            partitions: k.topic_partitions,
            configs: RETENTION,
        },
    ]
}

/// A consumer that reads whole topics from the beginning by assignment, for
/// readers that need every record rather than a share (the config log, the
/// api's traffic history): no group join, no commits.
pub(crate) fn reader_config(k: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("group.id", format!("{}.reader", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    overlay(merge(c, client_config(k)), &k.consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_reaches_the_right_clients() {
        let mut s = crate::runtime::config::Settings::load_from(None, vec![]).unwrap();
        let k = &mut s.kafka;
        k.client.insert("security.protocol".into(), "ssl".into());
        k.consumer.insert("fetch.wait.max.ms".into(), "10".into());
        k.producer.insert("linger.ms".into(), "20".into());
        let consumer = consumer_config(k);
        let producer = producer_config(k);
        assert_eq!(consumer.get("security.protocol"), Some("ssl"));
        assert_eq!(producer.get("security.protocol"), Some("ssl"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(
            producer.get("linger.ms"),
            Some("20"),
            "the operator's value wins over hookd's"
        );
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
    }

    #[test]
    fn fleet_consumers_commit_themselves_and_may_be_static_members() {
        let mut s = crate::runtime::config::Settings::load_from(None, vec![]).unwrap();
        let k = &mut s.kafka;
        let dynamic = consumer_config(k);
        assert_eq!(dynamic.get("group.instance.id"), None);
        assert_eq!(dynamic.get("enable.auto.commit"), Some("false"));
        assert_eq!(
            dynamic.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        k.instance_id = "worker-3".into();
        assert_eq!(
            consumer_config(k).get("group.instance.id"),
            Some("worker-3")
        );
        assert_eq!(
            reader_config(k).get("group.instance.id"),
            None,
            "readers join no group"
        );
        k.consumer.insert(
            "partition.assignment.strategy".into(),
            "range,roundrobin".into(),
        );
        assert_eq!(
            consumer_config(k).get("partition.assignment.strategy"),
            Some("range,roundrobin"),
            "the operator's choice wins (a rolling upgrade)"
        );
    }
}
