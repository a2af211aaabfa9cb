//! Settings: `config/default.toml`, the user's file over it, `HOOKD_*` env over both.
//!
//! In: an optional file path and the process environment. Out: validated
//! [`Settings`], or a [`ConfigError`] naming the key and the bad value. Unknown
//! keys are refused (`deny_unknown_fields`), so a typo never silently falls
//! back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::model::secrets::SENSITIVE;
use crate::template::{at_least_one, at_least_one_u32};

/// The embedded defaults; every key is documented there.
pub(crate) const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub integrations: IntegrationSettings,
    pub worker: WorkerSettings,
    pub delivery: DeliverySettings,
    pub metrics: MetricsSettings,
    pub outbound: OutboundSettings,
    pub limits: crate::policy::throttle::LimitSettings,
    pub sleeping: crate::policy::sleeping::SleepRule,
    pub retry: crate::policy::retry::RetrySettings,
    pub log: LogSettings,
    pub traffic: TrafficSettings,
    pub api: ApiSettings,
    pub templates: crate::template::TemplateLimits,
    #[serde(default)]
    pub secrets: SecretValues,
    /// Which scopes may use each secret (`"org:<id>"`, `"user:<id>"`,
    /// `"product:<id>"`, `"*"`), for integrations from the config log.
    #[serde(default)]
    pub secret_scopes: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    /// This worker's static member name in its consumer groups
    /// (`group.instance.id`); empty: a dynamic member.
    pub instance_id: String,
    pub events_topic: String,
    pub dead_letter_topic: String,
    pub responses_topic: String,
    /// The config log: integration and product records (compacted, one
    /// partition so every reader sees one order).
    pub config_topic: String,
    /// Per-minute traffic deltas, aggregated by the api.
    pub stats_topic: String,
    /// Delivery-log entries, secrets masked.
    pub log_topic: String,
    pub create_topics: bool,
    pub topic_partitions: i32,
    pub topic_replication: i32,
    /// librdkafka properties passed through unchanged, to every client.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// ...to consumers only (librdkafka warns about consumer properties
    /// given to a producer, and the reverse).
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// ...to producers only.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSettings {
    pub source: IntegrationSource,
    /// With `source = "file"`: file or directory of JSON integrations; empty
    /// for none.
    pub path: PathBuf,
}

/// Where a worker's integrations come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrationSource {
    /// `kafka.config_topic`, replayed then followed live.
    Kafka,
    /// `integrations.path`, reloaded on SIGHUP.
    File,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSettings {
    /// Publish traffic deltas and delivery-log entries for the api.
    pub publish: bool,
    /// How often a worker publishes what it counted and sampled.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// How long a write waits to see its own record applied from the log.
    #[serde(with = "humantime_serde")]
    pub apply_timeout: Duration,
    /// Days of daily history kept and shown.
    #[serde(deserialize_with = "at_least_one_u32")]
    pub history_days: NonZeroU32,
    /// Integrations one tenant (an org, a product, a user's sandbox) may
    /// have; creating one more is refused (403).
    #[serde(deserialize_with = "at_least_one")]
    pub max_integrations_per_tenant: NonZeroUsize,
    /// `test` calls per minute for one token's scope; past it, 429.
    #[serde(deserialize_with = "at_least_one_u32")]
    pub test_calls_per_minute: NonZeroU32,
    /// The console's cookies are `Secure` (and `__Host-` named): set when
    /// the api is reached over TLS (a proxy in front of it).
    #[serde(default)]
    pub secure_cookies: bool,
    #[serde(default)]
    pub tokens: Vec<TokenSettings>,
}

/// One bearer token and its scope: exactly one of `org`, `user`, `operator`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    pub token: String,
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub operator: bool,
}

/// `[secrets]`: name → value. A debug dump of the settings shows the names
/// only.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretValues(pub BTreeMap<String, String>);

impl std::ops::Deref for SecretValues {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl std::ops::DerefMut for SecretValues {
    fn deref_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.0
    }
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, SENSITIVE)))
            .finish()
    }
}

/// Tokens are secrets: never printed, not even in a debug dump of settings.
impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("token", &SENSITIVE)
            .field("org", &self.org)
            .field("user", &self.user)
            .field("operator", &self.operator)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    #[serde(deserialize_with = "at_least_one")]
    pub max_inflight_events: NonZeroUsize,
    #[serde(deserialize_with = "at_least_one")]
    pub max_inflight_deliveries: NonZeroUsize,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Event records larger than this are dead-lettered whole at decode
    /// (`record_too_large`), before anything copies them.
    #[serde(deserialize_with = "at_least_one")]
    pub max_event_bytes: NonZeroUsize,
    /// A partition whose commit point has not moved for this long while
    /// records of it are in flight is reported stalled (`/healthz`, metric).
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "at_least_one")]
    pub max_response_bytes: NonZeroUsize,
    pub pool_max_idle_per_host: usize,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    pub integration_label: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSettings {
    /// Non-public networks deliveries may reach anyway (CIDR).
    #[serde(deserialize_with = "networks")]
    pub allow_networks: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub filter: String,
}

/// A refused configuration: the key and what was wrong with its value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    }
}

impl Settings {
    /// Defaults, then `file`, then the `HOOKD_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_from(file, std::env::vars().collect())
    }

    /// As [`Settings::load`] with an explicit environment, so tests never
    /// touch the process's own.
    pub fn load_from(
        file: Option<&Path>,
        env: Vec<(String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut overrides = String::new();
        let mut secrets = BTreeMap::new();
        for (name, value) in env {
            if let Some(secret) = name.strip_prefix("HOOKD_SECRET_") {
                secrets.insert(secret.to_owned(), value);
            } else if let Some(key) = name.strip_prefix("HOOKD_") {
                let key = key.to_ascii_lowercase().replace("__", ".");
                overrides.push_str(&format!("{key} = {}\n", toml_value(&value)));
            }
        }
        if !overrides.is_empty() {
            // Dotted keys in a TOML document: the values are typed like the
            // file's (numbers, booleans, strings), and a bad key is refused.
            figment = figment.merge(Toml::string(&overrides));
        }
        let mut settings: Settings = figment.extract().map_err(refusal)?;
        settings.secrets.extend(secrets);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        if w.stall_after.is_zero() {
            return Err(invalid(
                "worker.stall_after",
                "must be longer than 0s, got 0s".into(),
            ));
        }
        let d = &self.delivery;
        if d.timeout.is_zero() {
            return Err(invalid(
                "delivery.timeout",
                "must be longer than 0s, got 0s".into(),
            ));
        }
        if d.connect_timeout.is_zero() {
            return Err(invalid(
                "delivery.connect_timeout",
                "must be longer than 0s, got 0s".into(),
            ));
        }
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.brokers", &k.brokers),
            ("kafka.group_id", &k.group_id),
            ("kafka.events_topic", &k.events_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
            ("kafka.responses_topic", &k.responses_topic),
            ("kafka.config_topic", &k.config_topic),
            ("kafka.stats_topic", &k.stats_topic),
            ("kafka.log_topic", &k.log_topic),
            ("retry.topic_prefix", &self.retry.topic_prefix),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty".into()));
            }
        }
        if k.topic_replication < 1 {
            return Err(invalid(
                "kafka.topic_replication",
                format!("must be at least 1, got {}", k.topic_replication),
            ));
        }
        if k.topic_partitions < 1 {
            return Err(invalid(
                "kafka.topic_partitions",
                format!("must be at least 1, got {}", k.topic_partitions),
            ));
        }
        self.limits
            .validate()
            .map_err(|(key, reason)| invalid(&key, reason))?;
        if let Some(d) = self.retry.delays.iter().find(|d| d.is_zero()) {
            return Err(invalid(
                "retry.delays",
                format!("delays must be longer than 0s, got {d:?}"),
            ));
        }
        if let Some(w) = self.retry.delays.windows(2).find(|w| w[1] <= w[0]) {
            return Err(invalid(
                "retry.delays",
                format!(
                    "delays must grow from one retry to the next, got {:?} after {:?}",
                    w[1], w[0]
                ),
            ));
        }
        let t = &self.templates;
        let ceiling = crate::template::MAX_SECTION_DEPTH_CEILING;
        if t.max_section_depth.get() > ceiling {
            return Err(invalid(
                "templates.max_section_depth",
                format!("must be at most {ceiling}, got {}", t.max_section_depth),
            ));
        }
        let r = &self.sleeping;
        if !(r.trip_ratio > 0.0 && r.trip_ratio <= 1.0) {
            return Err(invalid(
                "sleeping.trip_ratio",
                format!("must be in (0, 1], got {}", r.trip_ratio),
            ));
        }
        if r.trip_errors < 1.0 {
            return Err(invalid(
                "sleeping.trip_errors",
                format!("must be at least 1, got {}", r.trip_errors),
            ));
        }
        if r.half_life.is_zero() {
            return Err(invalid(
                "sleeping.half_life",
                "must be longer than 0s, got 0s".into(),
            ));
        }
        for name in self.secrets.keys() {
            if !crate::model::secrets::is_secret_name(name) {
                return Err(invalid(
                    &format!("secrets.{name}"),
                    format!("secret name {name:?} must match [A-Z_][A-Z0-9_]*"),
                ));
            }
            if name.starts_with("PARTICLE_")
                || name.starts_with("PRODUCT_")
                || name.starts_with("SPARK_")
            {
                return Err(invalid(
                    &format!("secrets.{name}"),
                    format!("secret name {name:?} would hide a predefined variable"),
                ));
            }
        }
        if self.traffic.flush_interval.is_zero() {
            return Err(invalid(
                "traffic.flush_interval",
                "must be longer than 0s, got 0s".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (n, t) in self.api.tokens.iter().enumerate() {
            let key = format!("api.tokens[{n}]");
            let scopes = [t.org.is_some(), t.user.is_some(), t.operator];
            if scopes.iter().filter(|s| **s).count() != 1 {
                return Err(invalid(
                    &key,
                    "give exactly one of org = \"<id>\", user = \"<id>\" or operator = true".into(),
                ));
            }
            if t.token.len() < 16 {
                return Err(invalid(
                    &format!("{key}.token"),
                    format!("must be at least 16 characters, got {}", t.token.len()),
                ));
            }
            if !seen.insert(t.token.as_str()) {
                return Err(invalid(&format!("{key}.token"), "is given twice".into()));
            }
        }
        for (name, scopes) in &self.secret_scopes {
            let key = format!("secret_scopes.{name}");
            if !self.secrets.contains_key(name) {
                return Err(invalid(
                    &key,
                    format!("names no configured secret {name:?}"),
                ));
            }
            if let Some(bad) = scopes.iter().find(|s| {
                *s != "*"
                    && !["org:", "user:", "product:"]
                        .iter()
                        .any(|p| s.strip_prefix(p).is_some_and(|id| !id.is_empty()))
            }) {
                return Err(invalid(
                    &key,
                    format!(
                        "{bad:?} is not \"*\", \"org:<id>\", \"user:<id>\" or \"product:<id>\""
                    ),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter).map_err(|e| {
            invalid(
                "log.filter",
                format!("{:?} is not a valid filter: {e}", self.log.filter),
            )
        })?;
        Ok(())
    }
}

/// A `host:port` address, refused with the value quoted.
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{s:?} is not an address of the form 127.0.0.1:9464"
        ))
    })
}

/// CIDR networks; a single address means just that address.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not a network like 10.0.0.0/8 or an address"
                    ))
                })
        })
        .collect()
}

/// An environment value as TOML: numbers, booleans and durations-as-strings
/// keep their type; anything else becomes a string.
fn toml_value(raw: &str) -> String {
    let is_number = raw.parse::<i64>().is_ok() || raw.parse::<f64>().is_ok_and(|f| f.is_finite());
    if is_number || raw == "true" || raw == "false" {
        raw.to_owned()
    } else {
        toml_string(raw)
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

/// A value refused while reading (a count of 0) is named with its key as
/// validation names it; anything else figment could not read is described
/// with where it came from.
fn refusal(e: figment::Error) -> ConfigError {
    if let figment::error::Kind::Message(m) = &e.kind {
        if m.starts_with("must be at least") && !e.path.is_empty() && e.count() == 1 {
            return invalid(&e.path.join("."), m.clone());
        }
    }
    ConfigError::Parse(describe(e))
}

/// figment's message names the key; add the value's source.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let src = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            if key.is_empty() {
                format!("{} ({src})", e.kind)
            } else {
                format!("{key}: {} ({src})", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    fn load(contents: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let f = file(contents);
        Settings::load_from(
            Some(f.path()),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_from(None, vec![]).unwrap();
        assert_eq!(s.kafka.events_topic, "device-events");
        assert_eq!(s.delivery.timeout, Duration::from_secs(20));
        assert_eq!(s.worker.max_inflight_events.get(), 1024);
        assert!(s.metrics.integration_label);
    }

    #[test]
    fn file_then_env_override() {
        let s = load(
            "[kafka]\nbrokers = \"a:1\"\n[kafka.client]\n\"fetch.wait.max.ms\" = \"10\"\n[worker]\nmax_inflight_events = 5\n",
            &[("HOOKD_WORKER__MAX_INFLIGHT_EVENTS", "7"), ("HOOKD_DELIVERY__TIMEOUT", "3s"), ("HOOKD_SECRET_API_KEY", "k"), ("OTHER", "x")],
        )
        .unwrap();
        assert_eq!(s.kafka.brokers, "a:1");
        assert_eq!(s.kafka.client["fetch.wait.max.ms"], "10");
        assert_eq!(s.worker.max_inflight_events.get(), 7);
        assert_eq!(s.delivery.timeout, Duration::from_secs(3));
        assert_eq!(s.secrets["API_KEY"], "k");
    }

    #[test]
    fn api_tokens_and_secret_scopes_are_checked() {
        let s = load(
            "[[api.tokens]]\ntoken = \"0123456789abcdefXYZ\"\norg = \"acme\"\n[secrets]\nK = \"v\"\n[secret_scopes]\nK = [\"org:acme\", \"*\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.api.tokens[0].org.as_deref(), Some("acme"));
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "tokens never printed"
        );
        let s = load("[secrets]\nK = \"value-never-printed\"\n", &[]).unwrap();
        let dump = format!("{s:?}");
        assert!(
            dump.contains("\"K\": \"[[SENSITIVE]]\"") && !dump.contains("value-never-printed"),
            "secret values never printed: {dump}"
        );
        let err = |toml: &str| load(toml, &[]).unwrap_err().to_string();
        assert_eq!(
            err("[[api.tokens]]\ntoken = \"short\"\nuser = \"u\"\n"),
            "api.tokens[0].token: must be at least 16 characters, got 5"
        );
        assert_eq!(
            err("[[api.tokens]]\ntoken = \"0123456789abcdefXYZ\"\nuser = \"u\"\noperator = true\n"),
            "api.tokens[0]: give exactly one of org = \"<id>\", user = \"<id>\" or operator = true"
        );
        assert_eq!(
            err("[secret_scopes]\nK = [\"org:acme\"]\n"),
            "secret_scopes.K: names no configured secret \"K\""
        );
        assert_eq!(
            err("[secrets]\nK = \"v\"\n[secret_scopes]\nK = [\"acme\"]\n"),
            "secret_scopes.K: \"acme\" is not \"*\", \"org:<id>\", \"user:<id>\" or \"product:<id>\""
        );
        assert_eq!(
            err("[integrations]\nsource = \"s3\"\n").split(':').next(),
            Some("integrations.source")
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = load("[worker]\nmax_inflight = 5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field: found `max_inflight`"), "{err}");
        let err = load("", &[("HOOKD_KAFKA__BROKER", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`broker`"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_key_and_value() {
        let err = load("[worker]\nmax_inflight_events = \"lots\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("worker.max_inflight_events: invalid type: found string \"lots\""),
            "{err}"
        );
        let err = load("[delivery]\ntimeout = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("delivery.timeout:") && err.contains("soon"),
            "{err}"
        );
        let err = load("[metrics]\nlisten = \"nowhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("metrics.listen:") && err.contains("nowhere"),
            "{err}"
        );
        let err = load("[worker]\nmax_inflight_events = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "worker.max_inflight_events: must be at least 1, got 0");
        let err = load("[secrets]\napi_key = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "secrets.api_key: secret name \"api_key\" must match [A-Z_][A-Z0-9_]*"
        );
        let err = load("[secrets]\nPARTICLE_X = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "secrets.PARTICLE_X: secret name \"PARTICLE_X\" would hide a predefined variable"
        );
        let err = load("[kafka]\ntopic_partitions = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "kafka.topic_partitions: must be at least 1, got 0");
    }

    /// Counts are non-zero types, refused as they are read, from the file or
    /// the environment, in the words of the other checks.
    #[test]
    fn a_zero_count_is_refused_naming_its_key() {
        let err = |toml: &str, env: &[(&str, &str)]| load(toml, env).unwrap_err().to_string();
        for key in [
            "worker.max_inflight_events",
            "worker.max_inflight_deliveries",
            "worker.max_event_bytes",
            "delivery.max_response_bytes",
            "retry.max_waiting",
            "limits.max_waiting",
            "api.max_integrations_per_tenant",
            "api.test_calls_per_minute",
            "api.history_days",
            "templates.max_template_bytes",
            "templates.max_integration_bytes",
            "templates.max_section_depth",
            "templates.max_output_bytes",
            "templates.max_render_steps",
            "templates.max_event_render_steps",
            "templates.max_event_output_bytes",
        ] {
            let (table, name) = key.split_once('.').unwrap();
            assert_eq!(
                err(&format!("[{table}]\n{name} = 0\n"), &[]),
                format!("{key}: must be at least 1, got 0")
            );
            let var = format!("HOOKD_{}__{}", table, name).to_ascii_uppercase();
            assert_eq!(
                err("", &[(var.as_str(), "0")]),
                format!("{key}: must be at least 1, got 0"),
                "{var}"
            );
        }
        let err = err("[worker]\nmax_inflight_events = -3\n", &[]);
        assert!(err.starts_with("worker.max_inflight_events:"), "{err}");
    }

    #[test]
    fn retry_delays_must_grow_and_template_limits_be_positive() {
        let err = |toml: &str| load(toml, &[]).unwrap_err().to_string();
        assert_eq!(
            err("[retry]\ndelays = [\"60s\", \"30s\"]\n"),
            "retry.delays: delays must grow from one retry to the next, got 30s after 60s"
        );
        assert_eq!(
            err("[retry]\ndelays = [\"30s\", \"30s\"]\n"),
            "retry.delays: delays must grow from one retry to the next, got 30s after 30s"
        );
        assert_eq!(
            err("[templates]\nmax_render_steps = 0\n"),
            "templates.max_render_steps: must be at least 1, got 0"
        );
        assert_eq!(
            err("[templates]\nmax_section_depth = 1000\n"),
            "templates.max_section_depth: must be at most 128, got 1000"
        );
        let s = load("[templates]\nmax_template_bytes = 100\n", &[]).unwrap();
        assert_eq!(s.templates.max_template_bytes.get(), 100);
        assert_eq!(
            s.templates.max_section_depth.get(),
            16,
            "the rest from the defaults"
        );
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err =
            Settings::load_from(Some(Path::new("/nonexistent/hookd.toml")), vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/hookd.toml does not exist"
        );
    }
}
