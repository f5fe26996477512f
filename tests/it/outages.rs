//! Dependency outages against the real binary: a TCP proxy between the
//! daemon and the MotherDuck API refuses connections, or swallows every
//! byte (a partition), for 20 s in the middle of rotations. Consumers keep
//! reading the store every 100 ms. Asserted: no consumer reads a token that
//! no longer works, the daemon never exits, the outage shows in
//! `dependency_up{dependency="motherduck"}` and in a failure counter within
//! the probe deadline (10 s) plus the probe interval plus 5 s, and the
//! policy rotates again within 30 s of the return. Prints the detection
//! latency and recovery time of each outage.

use std::process::Stdio;
use std::time::Duration;

use crate::support::config_toml;
use crate::support::daemon;
use crate::support::tcp_fault::{Mode, TcpFault};
use crate::support::world::{self, Scratch};

const SA: &str = "svc_outage";

fn sample(body: &str, line_start: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_partitioned_motherduck_api_is_seen_within_seconds_and_recovered_from() {
    let scratch = Scratch::new("outage");
    let dir = scratch.path().to_owned();
    let sim = world::simulator(&dir, &[SA]).await;
    let proxy = TcpFault::start(&sim.addr.to_string()).await;
    let port = crate::support::services::free_port();
    let src = config_toml::motherduck(&proxy.url)
        + "request_timeout = \"3s\"\nrate_limit_per_second = 1000\n"
        + &format!("\n[daemon]\nlisten = \"127.0.0.1:{port}\"\nhealth_interval = \"1s\"\n")
        + &config_toml::file_store("local", "store")
        + &config_toml::policy_on(
            "out",
            SA,
            r#"{ interval = "2s" }"#,
            "0s",
            r#"{ store = "local", path = "out.json" }"#,
        )
        + "token_ttl = \"1h\"\nretry = { max_attempts = 2, initial_backoff = \"200ms\", max_backoff = \"2s\" }\n"
        + &config_toml::verify_motherduck("5s");
    std::fs::write(dir.join("config.toml"), src).unwrap();
    let mut child = daemon::command_default_log(&dir.join("config.toml"), &dir)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.stderr")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.join("daemon.stderr")).unwrap_or_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let metrics = async || -> String {
        match http.get(&metrics_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let successes = |body: &str| {
        sample(
            body,
            r#"motherduck_rotator_rotations_total{outcome="success"}"#,
        )
        .unwrap_or(0.0)
    };
    let up = |body: &str| {
        sample(
            body,
            r#"motherduck_rotator_dependency_up{dependency="motherduck"}"#,
        )
    };
    let failures = |body: &str| -> f64 {
        body.lines()
            .filter(|l| {
                l.starts_with(
                    r#"motherduck_rotator_dependency_failures_total{dependency="motherduck""#,
                )
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };

    // A consumer reading the record every 100 ms: the token it reads must
    // be live in MotherDuck whenever it reads it.
    let record = dir.join("store/out.json");
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = {
        let (sim, stop) = (sim.sim.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut reads, mut dead) = (0u64, Vec::new());
            while !stop.is_cancelled() {
                if let Ok(text) = std::fs::read_to_string(&record)
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(id) = v["token_id"].as_str()
                {
                    reads += 1;
                    if !world::is_live(&sim, id) {
                        dead.push(id.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (reads, dead)
        })
    };

    // Two rotations before anything fails.
    let started = tokio::time::Instant::now();
    loop {
        let body = metrics().await;
        if successes(&body) >= 2.0 && up(&body) == Some(1.0) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited:\n{}",
            log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no two rotations in 60 s:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut report = Vec::new();
    for mode in [Mode::Blackhole, Mode::Refuse] {
        let before = metrics().await;
        let failures_before = failures(&before);
        proxy.set(mode);
        let outage = tokio::time::Instant::now();
        let mut detected = None;
        while outage.elapsed() < Duration::from_secs(20) {
            let body = metrics().await;
            if detected.is_none() && up(&body) == Some(0.0) && failures(&body) > failures_before {
                detected = Some(outage.elapsed());
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the daemon exited:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let detected = detected.unwrap_or_else(|| panic!("{mode:?}: never seen in 20 s"));
        assert!(
            detected <= Duration::from_secs(16),
            "{mode:?}: seen after {detected:?}"
        );
        proxy.set(Mode::Pass);
        let back = tokio::time::Instant::now();
        let at_return = successes(&metrics().await);
        let recovered = loop {
            let body = metrics().await;
            if successes(&body) > at_return && up(&body) == Some(1.0) {
                break back.elapsed();
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the daemon exited:\n{}",
                log()
            );
            assert!(
                back.elapsed() < Duration::from_secs(30),
                "{mode:?}: no rotation within 30 s of the return:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        report.push(format!(
            "{mode:?} 20 s: seen after {:.1} s, rotated again {:.1} s after the return",
            detected.as_secs_f64(),
            recovered.as_secs_f64()
        ));
    }
    stop.cancel();
    let (reads, dead) = consumer.await.unwrap();
    let _ = daemon::stop(&mut child, log).await;
    eprintln!(
        "outages (MotherDuck API): {}; {reads} consumer reads",
        report.join("; ")
    );
    assert!(reads > 300, "the consumer read {reads} times");
    assert_eq!(dead, Vec::<String>::new(), "consumers read dead tokens");
}
