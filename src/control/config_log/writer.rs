//! Writing `hookd.config`, read-your-writes.
//!
//! In: a key and a record (or `None` to delete). Out: the record's outcome
//! as this process's own [`ConfigLog`] decided it after reading it back from
//! the log, so a writer answers with what every worker will apply: applied,
//! or refused (a conflict with a concurrent write, or invalid).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::follower::ConfigLog;
use super::state::{Applied, RecordRefused};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Refused(RecordRefused),
    #[error("the config log cannot be written: {0}")]
    Kafka(KafkaError),
    #[error("the record was written at offset {0} but not read back in time; it may still apply")]
    Timeout(i64),
}

/// Produces config records and waits for their outcome.
pub struct ConfigWriter {
    producer: FutureProducer,
    log: Arc<ConfigLog>,
    /// How long to wait for the record to come back.
    apply_timeout: Duration,
}

impl ConfigWriter {
    pub fn new(
        producer: FutureProducer,
        log: Arc<ConfigLog>,
        apply_timeout: Duration,
    ) -> ConfigWriter {
        ConfigWriter {
            producer,
            log,
            apply_timeout,
        }
    }

    pub async fn write(&self, key: &str, value: Option<&[u8]>) -> Result<Applied, WriteError> {
        let mut record = FutureRecord::<str, [u8]>::to(self.log.topic()).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        let offset = self
            .producer
            .send(record, Timeout::After(self.apply_timeout))
            .await
            .map_err(|(e, _)| WriteError::Kafka(e))?
            .offset;
        match self.log.outcome_of(offset, self.apply_timeout).await {
            Some(Ok(applied)) => Ok(applied),
            Some(Err(refused)) => Err(WriteError::Refused(refused)),
            None => Err(WriteError::Timeout(offset)),
        }
    }
}
