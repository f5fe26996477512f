//! The rotation driver in process, as the daemon builds it, against the
//! simulator on a frozen clock and a manual wall clock moved in step with
//! it. Tests drive `Driver::reconcile` pass by pass.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use motherduck_rotator::clock::Clock;
use motherduck_rotator::config::{self, Config, Env};
use motherduck_rotator::daemon;
use motherduck_rotator::metrics::Metrics;
use motherduck_rotator::motherduck::Client;
use motherduck_rotator::rotation::driver::Driver;
use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{RunningSimulator, Simulator, SimulatorOptions};
use motherduck_rotator::verify::AckRegistry;

use crate::harness::client_with_token;
use crate::support::config_toml;

/// When the simulator's clock is frozen.
pub const T0: &str = "2026-03-01T12:00:00Z";

/// Secret references resolve from these `(name, value)` pairs, never from
/// the process's environment.
pub struct FakeEnv(pub Vec<(&'static str, String)>);

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }
}

/// A simulator frozen at [`T0`] that knows one service account, and the
/// driver's manual clock that moves with it.
pub struct Frozen {
    pub running: RunningSimulator,
    /// An admin client with recorded (not slept) backoff and no rate limit.
    pub admin: Client,
    pub clock: Clock,
}

impl Frozen {
    pub async fn start(seed: u64, account: &str) -> Frozen {
        let t0: DateTime<Utc> = T0.parse().unwrap();
        let running = Simulator::spawn(SimulatorOptions {
            frozen_at: Some(t0),
            seed: Some(seed),
        })
        .await
        .expect("simulator starts");
        running.sim.add_service_account(account);
        let admin = client_with_token(&running.base_url(), running.admin_token.clone());
        Frozen {
            running,
            admin,
            clock: Clock::manual(t0),
        }
    }

    /// Moves the driver's clock and the simulator's together.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(chrono::Duration::from_std(d).unwrap());
        self.running.sim.advance(d);
    }

    /// `[motherduck]` with the admin token from `MDR_TEST_ADMIN`, and
    /// `[daemon]` sweeping tokens older than `orphan_min_age`, as replica
    /// `instance_id`.
    pub fn head_toml(&self, orphan_min_age: &str, instance_id: &str) -> String {
        let motherduck =
            config_toml::motherduck_with(&self.running.base_url(), r#"{ env = "MDR_TEST_ADMIN" }"#);
        format!(
            "{motherduck}\n[daemon]\nlisten = \"127.0.0.1:0\"\norphan_min_age = \"{orphan_min_age}\"\nlock_retry_interval = \"1s\"\ninstance_id = \"{instance_id}\"\n"
        )
    }

    /// Parses `src` as the daemon would from `path`, `MDR_TEST_ADMIN` set
    /// to the admin token and `more` variables beside it.
    pub fn parse(&self, path: &Path, src: &str, more: Vec<(&'static str, String)>) -> Config {
        let mut vars = vec![(
            "MDR_TEST_ADMIN",
            self.running.admin_token.expose_secret().to_owned(),
        )];
        vars.extend(more);
        config::parse(path, src, &FakeEnv(vars))
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"))
    }

    /// The daemon's driver for `config`, with this clock and a client that
    /// records its backoff instead of sleeping.
    pub fn driver(&self, config: &Config, metrics: Arc<Metrics>) -> Driver {
        let mut d = daemon::driver_for(config, self.clock.clone(), metrics, AckRegistry::default())
            .unwrap();
        d.client = self.admin.clone();
        d.verify.motherduck = self.admin.clone();
        d
    }
}
