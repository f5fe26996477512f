//! Shared set-up for tests that talk to the simulator or wiremock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use motherduck_rotator::motherduck::{Client, ClientConfig, RetrySleep};
use motherduck_rotator::secret::SecretString;
use motherduck_rotator::simulator::{RunningSimulator, Simulator, SimulatorOptions};

/// Delays the client chose between attempts, recorded instead of slept.
pub type DelayLog = Arc<Mutex<Vec<Duration>>>;

/// A client config with quick backoff that records its delays.
pub fn fast_config(base_url: &str, token: SecretString) -> (ClientConfig, DelayLog) {
    let log: DelayLog = Arc::default();
    let mut cfg = ClientConfig::new(base_url, token);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.max_retries = 4;
    cfg.backoff_min = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_secs(2);
    cfg.rate_limit_per_second = std::num::NonZeroU32::new(10_000).unwrap();
    cfg.sleep = RetrySleep::Record(log.clone());
    (cfg, log)
}

pub fn delays(log: &DelayLog) -> Vec<Duration> {
    log.lock().unwrap().clone()
}

/// A running simulator with its clock frozen, and an admin client for it.
pub async fn sim() -> (RunningSimulator, Client, DelayLog) {
    let running = Simulator::spawn(SimulatorOptions {
        frozen_at: Some("2026-03-01T12:00:00Z".parse().unwrap()),
        seed: Some(7),
    })
    .await
    .expect("simulator starts");
    let (cfg, log) = fast_config(&running.base_url(), running.admin_token.clone());
    let client = Client::new(cfg).expect("client builds");
    (running, client, log)
}

/// A client for the same server with a different bearer token.
pub fn client_with_token(base_url: &str, token: SecretString) -> Client {
    Client::new(fast_config(base_url, token).0).expect("client builds")
}
