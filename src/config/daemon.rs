//! `[daemon]`: the daemon's own settings (HTTP server, logs, concurrency,
//! sweeps, shutdown, locking).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use super::raw::RawDaemon;
use super::validator::{Validator, root};
use crate::secret::SecretString;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`, acks).
    pub listen: SocketAddr,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_bearer_token: Option<SecretString>,
    pub log_format: LogFormat,
    /// Policies rotating at the same time, at most.
    pub rotation_concurrency: NonZeroUsize,
    /// How often the orphan sweep runs (it also runs at start).
    pub sweep_interval: Duration,
    /// Tokens younger than this are never treated as orphans.
    pub orphan_min_age: Duration,
    /// How long in-flight rotations get to reach a safe point on shutdown.
    pub shutdown_timeout: Duration,
    /// How soon to look again when another replica holds a policy's lock.
    pub lock_retry_interval: Duration,
    /// The longest a policy goes without its records being read again
    /// while it waits, so a rotation started elsewhere (`rotate`, another
    /// replica) is finished on time.
    pub recheck_interval: Duration,
    /// Passes in a row that fail before a rotation begins (records
    /// unreadable, lock unavailable) after which the policy's failure
    /// alert is raised, as for a failed rotation.
    pub failed_passes_before_alert: u32,
    /// How often the readiness probe checks MotherDuck and each store
    /// (one destination per place).
    pub health_interval: Duration,
    /// Names this replica in lock files and logs.
    pub instance_id: String,
}

impl Validator<'_> {
    pub(super) fn daemon(&mut self, raw: &RawDaemon) -> Option<DaemonSettings> {
        let path = root().key("daemon");
        let listen_s = raw
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:9464".to_owned());
        let listen = listen_s.parse::<SocketAddr>().map_err(|_| {
            self.error(
                &path.key("listen"),
                format!("`{listen_s}` is not an address like 127.0.0.1:9464"),
            );
        });
        let log_format = match raw.log_format.as_deref().unwrap_or("auto") {
            "auto" => LogFormat::Auto,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.error(
                    &path.key("log_format"),
                    format!("`{other}` is not one of auto, text, json"),
                );
                LogFormat::Auto
            }
        };
        let conc = raw.rotation_concurrency.unwrap_or(4);
        let rotation_concurrency = NonZeroUsize::new(conc).or_else(|| {
            self.error(&path.key("rotation_concurrency"), "must be at least 1");
            None
        });
        let sweep_interval = self.duration_at_least(
            &raw.sweep_interval,
            &path.key("sweep_interval"),
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        let orphan_min_age = self.duration(
            &raw.orphan_min_age,
            &path.key("orphan_min_age"),
            Duration::from_secs(300),
        );
        let shutdown_timeout = self.duration(
            &raw.shutdown_timeout,
            &path.key("shutdown_timeout"),
            Duration::from_secs(30),
        );
        let lock_retry_interval = self.nonzero_duration(
            &raw.lock_retry_interval,
            &path.key("lock_retry_interval"),
            Duration::from_secs(30),
        );
        let recheck_interval = self.duration_at_least(
            &raw.recheck_interval,
            &path.key("recheck_interval"),
            Duration::from_secs(300),
            Duration::from_secs(1),
        );
        let health_interval = self.duration_at_least(
            &raw.health_interval,
            &path.key("health_interval"),
            Duration::from_secs(5),
            Duration::from_secs(1),
        );
        let failed_passes_before_alert = raw.failed_passes_before_alert.unwrap_or(3);
        if failed_passes_before_alert == 0 {
            self.error(
                &path.key("failed_passes_before_alert"),
                "must be at least 1",
            );
        }
        if let Some(id) = &raw.instance_id
            && (id.trim().is_empty() || id.chars().any(char::is_control))
        {
            self.error(
                &path.key("instance_id"),
                format!(
                    "`{}` must be non-empty text without control characters",
                    id.escape_debug()
                ),
            );
        }
        let instance_id = raw.instance_id.clone().unwrap_or_else(default_instance_id);
        let metrics_bearer_token = match &raw.metrics_bearer_token {
            Some(r) => Some(self.secret(r, &path.key("metrics_bearer_token"))?.0),
            None => None,
        };
        Some(DaemonSettings {
            listen: listen.ok()?,
            log_format,
            rotation_concurrency: rotation_concurrency?,
            sweep_interval,
            orphan_min_age,
            shutdown_timeout,
            lock_retry_interval,
            recheck_interval,
            failed_passes_before_alert,
            health_interval,
            instance_id,
            metrics_bearer_token,
        })
    }
}

fn default_instance_id() -> String {
    // gethostname(2) rather than /proc/sys/kernel/hostname: systemd's
    // ProcSubset=pid hides the latter.
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_owned()
    } else {
        String::new()
    };
    let host = if host.is_empty() {
        "unknown-host".to_owned()
    } else {
        host
    };
    format!("{host}:{}", std::process::id())
}
