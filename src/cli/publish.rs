//! `hookd publish`: produce device events to the events topic, from JSON
//! lines (a file, or stdin) or from simulated devices.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::cli::simulate::Fleet;
use crate::runtime::config::Settings;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Settings naming the brokers and the events topic.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// JSON lines, one event per line; `-` reads stdin (also the default).
    #[arg(long, conflicts_with = "simulate")]
    pub file: Option<PathBuf>,
    /// Simulate this many devices instead of reading events.
    #[arg(long, value_name = "DEVICES")]
    pub simulate: Option<usize>,
    /// Events to simulate.
    #[arg(long, default_value_t = 1000, requires = "simulate")]
    pub count: u64,
    /// Products the simulated devices belong to, round-robin.
    #[arg(long, value_delimiter = ',', default_value = "1001,1002,1003")]
    pub products: Vec<u32>,
    /// Users that claim every 4th simulated device.
    #[arg(long, value_delimiter = ',', default_value = "demo-user")]
    pub users: Vec<String>,
    /// Events per second; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<u64> {
    let settings = Settings::load(args.config.as_deref())?;
    let producer: FutureProducer = crate::runtime::kafka::producer_config(&settings.kafka)
        .create()
        .context("creating the Kafka producer")?;
    let topic = settings.kafka.events_topic.clone();
    let mut sender = Sender::new(producer, topic, args.rate);
    match args.simulate {
        Some(devices) => {
            anyhow::ensure!(devices > 0, "--simulate needs at least one device");
            let users: Vec<&str> = args.users.iter().map(String::as_str).collect();
            let fleet = Fleet::new(devices, &args.products, &users, 4);
            let mut rng = rand::rng();
            for n in 0..args.count {
                let (key, event) = fleet.event(n, &mut rng);
                sender.send(Some(key), event).await?;
            }
        }
        None => {
            let reader: Box<dyn BufRead> = match &args.file {
                Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                )),
                _ => Box::new(std::io::stdin().lock()),
            };
            for line in reader.lines() {
                let line = line.context("reading events")?;
                if line.trim().is_empty() {
                    continue;
                }
                // Keyed by device so a device's events stay in order on one
                // partition; a line that is not an event is sent as is (the
                // worker dead-letters it).
                let key = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("coreid").and_then(|c| c.as_str()).map(str::to_owned));
                sender.send(key, line).await?;
            }
        }
    }
    sender.flush().await
}

/// Produces with a bounded number of unacknowledged records and an optional
/// rate.
struct Sender {
    producer: FutureProducer,
    topic: String,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    interval: Option<Duration>,
    started: Instant,
    sent: u64,
}

const MAX_PENDING: usize = 10_000;

impl Sender {
    fn new(producer: FutureProducer, topic: String, rate: f64) -> Sender {
        Sender {
            producer,
            topic,
            pending: Vec::new(),
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            started: Instant::now(),
            sent: 0,
        }
    }

    async fn send(&mut self, key: Option<String>, payload: String) -> anyhow::Result<()> {
        if let Some(interval) = self.interval {
            let due = self.started + interval.mul_f64(self.sent as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        loop {
            let mut record = FutureRecord::<str, str>::to(&self.topic).payload(&payload);
            if let Some(k) = &key {
                record = record.key(k);
            }
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.pending.push(f);
                    break;
                }
                // Local queue full: wait for acknowledgements, then retry.
                Err((_, _)) => self.settle().await?,
            }
        }
        self.sent += 1;
        if self.pending.len() >= MAX_PENDING {
            self.settle().await?;
        }
        Ok(())
    }

    async fn settle(&mut self) -> anyhow::Result<()> {
        for result in futures::future::join_all(self.pending.drain(..)).await {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => anyhow::bail!("the broker refused an event: {e}"),
                Err(_) => anyhow::bail!("the producer was dropped before acknowledging"),
            }
        }
        Ok(())
    }

    async fn flush(mut self) -> anyhow::Result<u64> {
        self.settle().await?;
        rdkafka::producer::Producer::flush(&self.producer, Timeout::After(Duration::from_secs(30)))
            .context("flushing the producer")?;
        Ok(self.sent)
    }
}
