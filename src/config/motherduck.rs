//! `[motherduck]`: the API the daemon talks to and its admin token.

use std::num::NonZeroU32;
use std::time::Duration;

use super::raw::RawMotherDuck;
use super::secrets::header_safe;
use super::validator::{Validator, root};
use crate::motherduck;
use crate::secret::{ExposeSecret, SecretString};

#[derive(Debug, Clone)]
pub struct MotherDuckSettings {
    pub api_url: String,
    pub admin_token: SecretString,
    /// The environment variable the admin token came from, if any, so
    /// verification commands do not inherit it.
    pub admin_token_env: Option<String>,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub rate_limit_per_second: NonZeroU32,
}

impl MotherDuckSettings {
    /// The client configuration these settings describe.
    pub fn client_config(&self) -> motherduck::ClientConfig {
        let mut c = motherduck::ClientConfig::new(self.api_url.clone(), self.admin_token.clone());
        c.request_timeout = self.request_timeout;
        c.max_retries = self.max_retries;
        c.rate_limit_per_second = self.rate_limit_per_second;
        c
    }
}

const DEFAULT_API_URL: &str = "https://api.motherduck.com";

impl Validator<'_> {
    pub(super) fn motherduck(&mut self, raw: &RawMotherDuck) -> Option<MotherDuckSettings> {
        let path = root().key("motherduck");
        let api_url = raw
            .api_url
            .clone()
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        if let Err(e) = motherduck::validate_base_url(&api_url) {
            self.error(&path.key("api_url"), e.to_string());
        }
        let token = self
            .secret(&raw.admin_token, &path.key("admin_token"))
            .filter(|(t, _)| {
                // The client sends it as `Authorization: Bearer …`.
                let ok = header_safe(t.expose_secret());
                if !ok {
                    self.error(
                        &path.key("admin_token"),
                        "the admin token contains characters not allowed in an HTTP header, such as a line break inside it",
                    );
                }
                ok
            });
        let request_timeout = self.nonzero_duration(
            &raw.request_timeout,
            &path.key("request_timeout"),
            Duration::from_secs(15),
        );
        let max_retries = raw.max_retries.unwrap_or(4);
        if max_retries > 20 {
            self.error(
                &path.key("max_retries"),
                format!("`{max_retries}` is more than the maximum of 20"),
            );
        }
        let rate = raw.rate_limit_per_second.unwrap_or(100);
        let rate_limit_per_second = NonZeroU32::new(rate).or_else(|| {
            self.error(&path.key("rate_limit_per_second"), "must be at least 1");
            None
        });
        let (admin_token, admin_token_env) = token?;
        Some(MotherDuckSettings {
            api_url,
            admin_token,
            admin_token_env,
            request_timeout,
            max_retries,
            rate_limit_per_second: rate_limit_per_second?,
        })
    }
}
