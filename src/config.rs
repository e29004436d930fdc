//! The pipeline config file (TOML): what the numbers mean. Runtime knobs are flags.
//!
//! ```toml
//! [service_level]
//! sl_threshold_s = 20     # answered within this many seconds (inclusive) meets the SL
//! short_abandon_s = 5     # abandons strictly shorter than this are short abandons
//!
//! [quality]               # Teams CQD audio thresholds: poor if any is exceeded
//! poor_jitter_ms = 30
//! poor_loss_rate = 0.1
//! poor_rtt_ms = 500
//! poor_degradation = 1.0
//! ```
//!
//! `ccstream run` also reads where things are:
//!
//! ```toml
//! [pipeline]
//! log = "file://ccstream-log"        # the event log (file:// or kafka://)
//! data = "ccstream-data"             # the tables
//! inputs = ["incoming/"]             # canonical events files ingested at start (optional)
//! partitions = 4                     # partitions of a new log
//! group = "ccstream"
//! metrics_listen = "127.0.0.1:9464"  # optional
//! commit_interval_ms = 1000
//! ```
//!
//! and which source listeners it starts (each optional; port 0 picks a free port, reported
//! through `--sources-listen-file`):
//!
//! ```toml
//! [sources]
//! default_tenant = "contoso"          # the tenant of input no rule maps
//! syslog_udp = "0.0.0.0:514"          # AudioCodes CDRs over syslog
//! syslog_tcp = "0.0.0.0:514"
//! sip_udp = "0.0.0.0:5060"            # RFC 6035 vq-rtcpxr PUBLISH
//! sip_tcp = "0.0.0.0:5060"
//! http = "0.0.0.0:8080"               # POST /events, /acs/eventgrid, /acs/callautomation
//! max_message_bytes = 65535
//! max_body_bytes = 4194304
//! [[sources.webhooks]]                # a webhook credential and the tenants it speaks for
//! name = "contoso"
//! secret = "…"
//! tenants = ["contoso"]
//! [[sources.sbc_tenants]]             # first match wins; every given key must match
//! tenant = "fabrikam"
//! ip_group = "Fabrikam-Teams"         # or number_prefix = "+4420", or sender = "10.0.0.5"
//! [[sources.acs_tenants]]
//! tenant = "fabrikam"
//! resource = "fabrikam-acs"           # the Communication Services resource name
//! ```
//!
//! Every key is optional (`run` needs `pipeline.log` and `pipeline.data`); the defaults are
//! the oracle's. Unknown keys are errors.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ccstream_processor::kpi::{Cqd, Params};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) service_level: ServiceLevel,
    #[serde(default)]
    pub(crate) quality: Quality,
    #[serde(default)]
    pub(crate) pipeline: Option<Pipeline>,
    /// The source listeners `ccstream run` starts (`[sources]`).
    #[serde(default)]
    pub(crate) sources: Option<ccstream_ingest::listen::SourcesConfig>,
    /// What `ccstream serve` (and `run`) serves, to whom (`[serve]`).
    #[serde(default)]
    pub(crate) serve: Option<ccstream_query::ServeConfig>,
}

/// Where `ccstream run` reads and writes (`[pipeline]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pipeline {
    pub(crate) log: String,
    pub(crate) data: String,
    #[serde(default)]
    pub(crate) inputs: Vec<std::path::PathBuf>,
    pub(crate) partitions: Option<u32>,
    #[serde(default = "default_group")]
    pub(crate) group: String,
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    #[serde(default = "default_commit_interval_ms")]
    pub(crate) commit_interval_ms: u64,
}

fn default_group() -> String {
    "ccstream".into()
}

fn default_commit_interval_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServiceLevel {
    pub(crate) sl_threshold_s: f64,
    pub(crate) short_abandon_s: f64,
}

impl Default for ServiceLevel {
    fn default() -> Self {
        ServiceLevel { sl_threshold_s: 20.0, short_abandon_s: 5.0 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Quality {
    pub(crate) poor_jitter_ms: f64,
    pub(crate) poor_loss_rate: f64,
    pub(crate) poor_rtt_ms: f64,
    pub(crate) poor_degradation: f64,
}

impl Default for Quality {
    fn default() -> Self {
        let c = Cqd::default();
        Quality {
            poor_jitter_ms: c.jitter_ms,
            poor_loss_rate: c.loss_rate,
            poor_rtt_ms: c.rtt_ms,
            poor_degradation: c.degradation,
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults when `None`.
    pub(crate) fn load(path: Option<&Path>) -> Result<Config> {
        let Some(path) = path else { return Ok(Config::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
        config.params()?;
        Ok(config)
    }

    /// The fold's parameters.
    pub(crate) fn params(&self) -> Result<Params> {
        let sl = &self.service_level;
        for (name, v) in [("sl_threshold_s", sl.sl_threshold_s), ("short_abandon_s", sl.short_abandon_s)] {
            if !v.is_finite() || v < 0.0 {
                bail!("service_level.{name} must be a number of seconds ≥ 0, not {v}");
            }
        }
        let q = &self.quality;
        Ok(Params {
            sl_threshold_ms: (sl.sl_threshold_s * 1000.0).round() as i64,
            short_abandon_ms: (sl.short_abandon_s * 1000.0).round() as i64,
            cqd: Cqd {
                jitter_ms: q.poor_jitter_ms,
                loss_rate: q.poor_loss_rate,
                rtt_ms: q.poor_rtt_ms,
                degradation: q.poor_degradation,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_oracles() {
        assert_eq!(Config::default().params().unwrap(), Params::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("[service_level]\nsl_treshold_s = 30\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `sl_treshold_s`"), "{err}");
        let c: Config = toml::from_str("[service_level]\nsl_threshold_s = 30\n").unwrap();
        assert_eq!(c.params().unwrap().sl_threshold_ms, 30_000);
    }
}
