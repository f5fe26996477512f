//! `[alerts]`: the daemon's own notifications and their sinks.

use super::raw::RawAlerts;
use super::validator::{Validator, root};

impl Validator<'_> {
    pub(super) fn alerts(
        &mut self,
        raw: Option<&RawAlerts>,
    ) -> Option<crate::alerts::AlertSettings> {
        use crate::alerts::{AlertSettings, Sink};
        let mut settings = AlertSettings::default();
        let Some(raw) = raw else {
            return Some(settings);
        };
        let path = root().key("alerts");
        settings.repeat_interval = self.duration(
            &raw.repeat_interval,
            &path.key("repeat_interval"),
            settings.repeat_interval,
        );
        settings.expiry_warning = self.duration(
            &raw.expiry_warning,
            &path.key("expiry_warning"),
            settings.expiry_warning,
        );
        settings.old_token_limit = self.duration(
            &raw.old_token_limit,
            &path.key("old_token_limit"),
            settings.old_token_limit,
        );
        if let Some(n) = raw.max_per_minute {
            match std::num::NonZeroU32::new(n) {
                Some(n) => settings.max_per_minute = n,
                None => self.error(&path.key("max_per_minute"), "must be at least 1"),
            }
        }
        if let Some(n) = raw.max_attempts {
            if n == 0 || n > 20 {
                self.error(
                    &path.key("max_attempts"),
                    format!("`{n}` is not between 1 and 20"),
                );
            }
            settings.max_attempts = n.clamp(1, 20);
        }
        settings.runbook_url = raw.runbook_url.clone();
        let before = self.errors.len();
        for (i, sink) in raw.sinks.iter().enumerate() {
            let sp = path.key("sink").index(i);
            let url = |v: &mut Self, field: &str| -> Option<reqwest::Url> {
                let Some(u) = sink.url.as_deref() else {
                    v.error(
                        &sp.key(field),
                        format!("a `{}` sink needs `url`", sink.kind),
                    );
                    return None;
                };
                // Alerts carry no secrets (webhook bodies are signed), so
                // plain http is allowed, as in-cluster Alertmanagers use it.
                match reqwest::Url::parse(u) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(parsed),
                    Ok(_) => {
                        v.error(&sp.key(field), format!("`{u}` must be an http(s) URL"));
                        None
                    }
                    Err(e) => {
                        v.error(&sp.key(field), format!("invalid URL `{u}`: {e}"));
                        None
                    }
                }
            };
            let unexpected = |v: &mut Self, present: bool, field: &str| {
                if present {
                    v.error(
                        &sp.key(field),
                        format!("not used by a `{}` sink", sink.kind),
                    );
                }
            };
            match sink.kind.as_str() {
                "alertmanager" => {
                    unexpected(self, sink.hmac_secret.is_some(), "hmac_secret");
                    unexpected(self, sink.webhook_url.is_some(), "webhook_url");
                    if let Some(url) = url(self, "url") {
                        settings.sinks.push(Sink::Alertmanager { url });
                    }
                }
                "webhook" => {
                    unexpected(self, sink.webhook_url.is_some(), "webhook_url");
                    let u = url(self, "url");
                    let secret = match &sink.hmac_secret {
                        Some(r) => self.secret(r, &sp.key("hmac_secret")).map(|(s, _)| s),
                        None => {
                            self.error(&sp.key("type"), "a `webhook` sink needs `hmac_secret`, the key its bodies are signed with");
                            None
                        }
                    };
                    if let (Some(url), Some(hmac_secret)) = (u, secret) {
                        settings.sinks.push(Sink::Webhook { url, hmac_secret });
                    }
                }
                "slack" => {
                    unexpected(self, sink.url.is_some(), "url");
                    unexpected(self, sink.hmac_secret.is_some(), "hmac_secret");
                    match &sink.webhook_url {
                        Some(r) => {
                            if let Some((s, _)) = self.secret(r, &sp.key("webhook_url")) {
                                settings.sinks.push(Sink::Slack { webhook_url: s });
                            }
                        }
                        None => self.error(
                            &sp.key("type"),
                            "a `slack` sink needs `webhook_url` (a secret reference: the URL is a credential)",
                        ),
                    }
                }
                other => self.error(
                    &sp.key("type"),
                    format!("`{other}` is not one of alertmanager, webhook, slack"),
                ),
            }
        }
        (self.errors.len() == before).then_some(settings)
    }
}
