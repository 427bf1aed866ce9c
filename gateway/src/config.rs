//! Gateway configuration: defaults, then an optional TOML file, then environment
//! variables, then command-line flags (each layer overrides the one before). Validated
//! once when built; the rest of the gateway reads only the typed, checked result.

use crate::web::session::SECRET_BYTES_MIN;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default request body limit: 32 MiB fits long multi-image prompts as base64 while
/// bounding what one request may make the gateway buffer.
pub const BODY_BYTES_MAX_DEFAULT: usize = 32 << 20;
/// The body limit may not be configured above this (1 GiB): the body is held in memory.
pub const BODY_BYTES_MAX_CEILING: usize = 1 << 30;
/// Longest any configured timeout may be (one hour): holds must expire well within the
/// ledger's `HOLD_TTL_MS_MAX` (24 h) even after a settle grace period.
pub const TIMEOUT_MS_CEILING: u64 = 60 * 60 * 1000;

const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
const DATA_DIR_DEFAULT: &str = "./solrouter-data";

/// Timeouts of one upstream exchange. Connect covers TCP+TLS, first byte covers the wait
/// for response headers (a model's queueing and prompt processing), idle bounds the gap
/// between two body chunks (a stalled stream), total bounds the whole exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// The checked configuration of a gateway process.
#[derive(Debug, Clone)]
pub struct Config {
    listen: SocketAddr,
    data_dir: PathBuf,
    admin_token: Option<String>,
    body_bytes_max: usize,
    upstream: UpstreamTimeouts,
    upstream_ca_file: Option<PathBuf>,
    waive_empty_answers: bool,
    webhook_secret: Option<String>,
    session_secret: Option<String>,
    zdr_hosts: Vec<String>,
}

/// The raw layers: every field optional, so each layer sets only what it names.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub body_bytes_max: Option<usize>,
    pub upstream_connect_timeout_ms: Option<u64>,
    pub upstream_first_byte_timeout_ms: Option<u64>,
    pub upstream_idle_timeout_ms: Option<u64>,
    pub upstream_total_timeout_ms: Option<u64>,
    /// A PEM file of CA certificates trusted for `https` providers besides the Mozilla
    /// roots: a private CA in front of a self-hosted model, or a development CA's mock
    /// provider (`solrouter mock-upstream --tls-cert`). Default: the Mozilla roots only.
    pub upstream_ca_file: Option<PathBuf>,
    /// Whether an answer that produced nothing (no output tokens; an error or an empty
    /// answer) goes uncharged, its provider bill written off. Default: true.
    pub waive_empty_answers: Option<bool>,
    /// The payments webhook's signing secret (Stripe's `whsec_…`); dev mode makes one.
    pub webhook_secret: Option<String>,
    /// Signs the dashboard's session tokens; every gateway of a cluster must have the
    /// same (dev mode generates one in its data directory when absent).
    pub session_secret: Option<String>,
    /// Hosts with which the operator holds its own zero-data-retention agreement (the
    /// catalogue's host names, e.g. `["openai", "anthropic"]`; in the environment
    /// comma-separated): `provider.zdr: true` and `data_collection: "deny"` route to
    /// them whatever their published policy. Default: none.
    pub zdr_hosts: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
}

impl ConfigLayer {
    /// Reads a TOML file whose keys are the field names above.
    pub fn from_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// Reads `SOLROUTER_<FIELD>` variables through `lookup` (the process environment in
    /// production, a table in tests).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<ConfigLayer, ConfigError> {
        let number = |name: &'static str| -> Result<Option<u64>, ConfigError> {
            lookup(name)
                .map(|text| {
                    text.trim().parse::<u64>().map_err(|error| ConfigError::Invalid {
                        name,
                        message: format!("{text:?} is not a number: {error}"),
                    })
                })
                .transpose()
        };
        Ok(ConfigLayer {
            listen: lookup("SOLROUTER_LISTEN"),
            data_dir: lookup("SOLROUTER_DATA_DIR").map(PathBuf::from),
            admin_token: lookup("SOLROUTER_ADMIN_TOKEN"),
            body_bytes_max: number("SOLROUTER_BODY_BYTES_MAX")?.map(|n| n as usize),
            upstream_connect_timeout_ms: number("SOLROUTER_UPSTREAM_CONNECT_TIMEOUT_MS")?,
            upstream_first_byte_timeout_ms: number("SOLROUTER_UPSTREAM_FIRST_BYTE_TIMEOUT_MS")?,
            upstream_idle_timeout_ms: number("SOLROUTER_UPSTREAM_IDLE_TIMEOUT_MS")?,
            upstream_total_timeout_ms: number("SOLROUTER_UPSTREAM_TOTAL_TIMEOUT_MS")?,
            upstream_ca_file: lookup("SOLROUTER_UPSTREAM_CA_FILE").map(PathBuf::from),
            waive_empty_answers: lookup("SOLROUTER_WAIVE_EMPTY_ANSWERS")
                .map(|text| match text.trim() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(ConfigError::Invalid {
                        name: "SOLROUTER_WAIVE_EMPTY_ANSWERS",
                        message: format!("{text:?} is not true or false"),
                    }),
                })
                .transpose()?,
            webhook_secret: lookup("SOLROUTER_WEBHOOK_SECRET"),
            session_secret: lookup("SOLROUTER_SESSION_SECRET"),
            zdr_hosts: lookup("SOLROUTER_ZDR_HOSTS").map(|text| {
                text.split(',')
                    .map(|host| host.trim().to_owned())
                    .filter(|h| !h.is_empty())
                    .collect()
            }),
        })
    }

    /// `self` with every field that `over` sets replaced.
    pub fn overridden_by(self, over: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            listen: over.listen.or(self.listen),
            data_dir: over.data_dir.or(self.data_dir),
            admin_token: over.admin_token.or(self.admin_token),
            body_bytes_max: over.body_bytes_max.or(self.body_bytes_max),
            upstream_connect_timeout_ms: over
                .upstream_connect_timeout_ms
                .or(self.upstream_connect_timeout_ms),
            upstream_first_byte_timeout_ms: over
                .upstream_first_byte_timeout_ms
                .or(self.upstream_first_byte_timeout_ms),
            upstream_idle_timeout_ms: over
                .upstream_idle_timeout_ms
                .or(self.upstream_idle_timeout_ms),
            upstream_total_timeout_ms: over
                .upstream_total_timeout_ms
                .or(self.upstream_total_timeout_ms),
            upstream_ca_file: over.upstream_ca_file.or(self.upstream_ca_file),
            waive_empty_answers: over.waive_empty_answers.or(self.waive_empty_answers),
            webhook_secret: over.webhook_secret.or(self.webhook_secret),
            session_secret: over.session_secret.or(self.session_secret),
            zdr_hosts: over.zdr_hosts.or(self.zdr_hosts),
        }
    }
}

impl Config {
    /// Applies defaults to the merged layers and validates the result.
    pub fn try_new(layer: ConfigLayer) -> Result<Config, ConfigError> {
        let listen_text = layer.listen.as_deref().unwrap_or(LISTEN_DEFAULT);
        let listen = listen_text.parse().map_err(|error| ConfigError::Invalid {
            name: "listen",
            message: format!("{listen_text:?} is not an address such as 127.0.0.1:8080: {error}"),
        })?;
        let admin_token = layer.admin_token.filter(|token| !token.is_empty());
        if let Some(token) = &admin_token {
            if token.len() < 16 || token.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err(ConfigError::Invalid {
                    name: "admin_token",
                    message: "needs at least 16 printable ASCII characters".into(),
                });
            }
        }
        let body_bytes_max = layer.body_bytes_max.unwrap_or(BODY_BYTES_MAX_DEFAULT);
        if body_bytes_max == 0 || body_bytes_max > BODY_BYTES_MAX_CEILING {
            return Err(ConfigError::Invalid {
                name: "body_bytes_max",
                message: format!("must be between 1 and {BODY_BYTES_MAX_CEILING}"),
            });
        }
        let upstream = UpstreamTimeouts {
            connect: timeout(
                "upstream_connect_timeout_ms",
                layer.upstream_connect_timeout_ms,
                10_000,
            )?,
            first_byte: timeout(
                "upstream_first_byte_timeout_ms",
                layer.upstream_first_byte_timeout_ms,
                120_000,
            )?,
            idle: timeout("upstream_idle_timeout_ms", layer.upstream_idle_timeout_ms, 60_000)?,
            total: timeout("upstream_total_timeout_ms", layer.upstream_total_timeout_ms, 600_000)?,
        };
        if upstream.first_byte > upstream.total || upstream.idle > upstream.total {
            return Err(ConfigError::Invalid {
                name: "upstream_total_timeout_ms",
                message: "must be at least the first-byte and idle timeouts".into(),
            });
        }
        let data_dir = layer.data_dir.unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
        let waive_empty_answers = layer.waive_empty_answers.unwrap_or(true);
        let webhook_secret = layer.webhook_secret.filter(|secret| !secret.is_empty());
        if webhook_secret.as_ref().is_some_and(|secret| secret.len() < 16) {
            return Err(ConfigError::Invalid {
                name: "webhook_secret",
                message: "needs at least 16 characters".into(),
            });
        }
        let session_secret = layer.session_secret.filter(|secret| !secret.is_empty());
        if session_secret.as_ref().is_some_and(|secret| secret.len() < SECRET_BYTES_MIN) {
            return Err(ConfigError::Invalid {
                name: "session_secret",
                message: format!("needs at least {SECRET_BYTES_MIN} bytes"),
            });
        }
        let mut zdr_hosts = layer.zdr_hosts.unwrap_or_default();
        if let Some(host) = zdr_hosts.iter().find(|host| !is_host_name(host)) {
            return Err(ConfigError::Invalid {
                name: "zdr_hosts",
                message: format!("{host:?} is not a host name such as openai or deepinfra"),
            });
        }
        zdr_hosts.sort_unstable();
        zdr_hosts.dedup();
        Ok(Config {
            listen,
            data_dir,
            admin_token,
            body_bytes_max,
            upstream,
            upstream_ca_file: layer.upstream_ca_file.filter(|path| !path.as_os_str().is_empty()),
            waive_empty_answers,
            webhook_secret,
            session_secret,
            zdr_hosts,
        })
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The payments webhook's secret, if configured (dev mode makes one when absent).
    pub fn webhook_secret(&self) -> Option<&str> {
        self.webhook_secret.as_deref()
    }

    /// The configured admin token, if any (dev mode generates one when absent).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    pub fn body_bytes_max(&self) -> usize {
        self.body_bytes_max
    }

    pub fn upstream(&self) -> UpstreamTimeouts {
        self.upstream
    }

    /// See [`ConfigLayer::upstream_ca_file`]; read when the upstream client is built.
    pub fn upstream_ca_file(&self) -> Option<&Path> {
        self.upstream_ca_file.as_deref()
    }

    /// See [`ConfigLayer::session_secret`].
    pub fn session_secret(&self) -> Option<&str> {
        self.session_secret.as_deref()
    }

    /// See [`ConfigLayer::waive_empty_answers`].
    pub fn waive_empty_answers(&self) -> bool {
        self.waive_empty_answers
    }

    /// See [`ConfigLayer::zdr_hosts`]; whether the catalogue serves them is checked where
    /// the catalogue is built ([`crate::catalog::Catalog::with_zdr_agreements`]).
    pub fn zdr_hosts(&self) -> &[String] {
        &self.zdr_hosts
    }
}

/// A catalogue host name: lower-case letters, digits and dashes (`mock-slow`).
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn timeout(name: &'static str, ms: Option<u64>, default_ms: u64) -> Result<Duration, ConfigError> {
    let ms = ms.unwrap_or(default_ms);
    if ms == 0 || ms > TIMEOUT_MS_CEILING {
        return Err(ConfigError::Invalid {
            name,
            message: format!("must be between 1 and {TIMEOUT_MS_CEILING} ms"),
        });
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
    }

    #[test]
    fn layers_override_in_order() {
        let file: ConfigLayer =
            toml::from_str("listen = \"127.0.0.1:1\"\nbody_bytes_max = 10").expect("toml");
        let environment =
            ConfigLayer::from_env(env(&[("SOLROUTER_BODY_BYTES_MAX", "20")])).expect("env");
        let config = Config::try_new(file.clone().overridden_by(environment)).expect("valid");
        assert_eq!(config.listen(), "127.0.0.1:1".parse().expect("addr"));
        assert_eq!(config.body_bytes_max(), 20);
        assert_eq!(config.upstream().total, Duration::from_secs(600));
        assert!(config.waive_empty_answers());
        let charging = ConfigLayer::from_env(env(&[("SOLROUTER_WAIVE_EMPTY_ANSWERS", "false")]));
        assert!(!Config::try_new(charging.expect("env")).expect("valid").waive_empty_answers());
        assert_eq!(config.upstream_ca_file(), None);
        let ca = ConfigLayer::from_env(env(&[("SOLROUTER_UPSTREAM_CA_FILE", "/etc/ca.pem")]));
        let config = Config::try_new(file.overridden_by(ca.expect("env"))).expect("valid");
        assert_eq!(config.upstream_ca_file(), Some(Path::new("/etc/ca.pem")));
    }

    #[test]
    fn zdr_hosts_come_from_the_file_or_the_environment() {
        assert!(config_of(ConfigLayer::default()).zdr_hosts().is_empty());
        let file: ConfigLayer = toml::from_str("zdr_hosts = [\"openai\"]").expect("toml");
        assert_eq!(config_of(file.clone()).zdr_hosts(), ["openai"]);
        let environment = ConfigLayer::from_env(env(&[(
            "SOLROUTER_ZDR_HOSTS",
            " anthropic, openai,anthropic ,",
        )]))
        .expect("env");
        // The environment overrides the file; duplicates and empty items are dropped.
        assert_eq!(config_of(file.overridden_by(environment)).zdr_hosts(), ["anthropic", "openai"]);
        // An empty variable declares no agreement, overriding the file's.
        let none = ConfigLayer::from_env(env(&[("SOLROUTER_ZDR_HOSTS", "")])).expect("env");
        let file: ConfigLayer = toml::from_str("zdr_hosts = [\"openai\"]").expect("toml");
        assert!(config_of(file.overridden_by(none)).zdr_hosts().is_empty());
    }

    fn config_of(layer: ConfigLayer) -> Config {
        Config::try_new(layer).expect("valid")
    }

    #[test]
    fn rejects_invalid_values() {
        let check = |pairs: &'static [(&'static str, &'static str)], name: &str| {
            let error = ConfigLayer::from_env(env(pairs)).and_then(Config::try_new);
            match error {
                Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, name),
                other => panic!("expected {name} to be rejected, got {other:?}"),
            }
        };
        check(&[("SOLROUTER_LISTEN", "nowhere")], "listen");
        check(&[("SOLROUTER_BODY_BYTES_MAX", "0")], "body_bytes_max");
        check(&[("SOLROUTER_BODY_BYTES_MAX", "lots")], "SOLROUTER_BODY_BYTES_MAX");
        check(&[("SOLROUTER_WAIVE_EMPTY_ANSWERS", "maybe")], "SOLROUTER_WAIVE_EMPTY_ANSWERS");
        check(&[("SOLROUTER_ADMIN_TOKEN", "short")], "admin_token");
        check(&[("SOLROUTER_SESSION_SECRET", "short")], "session_secret");
        check(&[("SOLROUTER_UPSTREAM_IDLE_TIMEOUT_MS", "0")], "upstream_idle_timeout_ms");
        check(&[("SOLROUTER_UPSTREAM_TOTAL_TIMEOUT_MS", "1000")], "upstream_total_timeout_ms");
        check(&[("SOLROUTER_ZDR_HOSTS", "openai,Open AI")], "zdr_hosts");
        assert!(toml::from_str::<ConfigLayer>("bogus = 1").is_err());
    }
}
