//! Producing single records with key, value and headers, acks=all, through rustfs-kafka's
//! producer (which speaks today's produce protocol and record batches).
//!
//! Used for the dead-letter topic by the poller and by the `send` command.
use std::time::Duration;

use rustfs_kafka::producer::{Headers, Producer, Record, RequiredAcks};

use super::KafkaError;

pub struct DeadLetterProducer {
    hosts: Vec<String>,
    client_id: String,
    ack_timeout: Duration,
    /// Created on first use and dropped after any error, so the next send starts from fresh
    /// metadata and connections (a topic created meanwhile, a broker back from an outage).
    producer: Option<Producer>,
}

impl DeadLetterProducer {
    pub fn new(hosts: Vec<String>, client_id: &str, ack_timeout: Duration) -> DeadLetterProducer {
        DeadLetterProducer {
            hosts,
            client_id: client_id.to_owned(),
            ack_timeout,
            producer: None,
        }
    }

    /// Sends one record and waits until all in-sync replicas have it.
    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), KafkaError> {
        let producer = match &mut self.producer {
            Some(p) => p,
            None => {
                let p = Producer::from_hosts(self.hosts.clone())
                    .with_required_acks(RequiredAcks::All)
                    .with_ack_timeout(self.ack_timeout)
                    .with_client_id(self.client_id.clone())
                    .create()
                    .map_err(|e| self.error(topic, e))?;
                self.producer.insert(p)
            }
        };
        let mut hs = Headers::new();
        for (k, v) in headers {
            hs.insert(*k, v);
        }
        let record = Record {
            topic,
            partition: -1,
            key: key.unwrap_or_default(),
            value,
            headers: hs,
        };
        let result = producer.send(&record);
        result.map_err(|e| {
            self.producer = None;
            self.error(topic, e)
        })
    }

    fn error(&self, topic: &str, e: rustfs_kafka::Error) -> KafkaError {
        KafkaError::Produce {
            servers: self.hosts.join(","),
            topic: topic.to_owned(),
            detail: e.to_string(),
        }
    }
}
