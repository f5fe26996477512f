//! A lost lease fences its holder (invariant 9), against the real binary:
//! two `run` daemons share a policy whose lock lives on OpenBao KV v2 and
//! one whose lock lives on a moto secret. Verification takes a few
//! seconds. The daemon that holds a lease in the middle of verification is
//! stopped (SIGSTOP) for several lease TTLs, so the other takes over and
//! finishes the rotation, then it is resumed (SIGCONT). Consumers read
//! every destination every 100 ms throughout.
//!
//! The resumed daemon must write nothing more for the pass it was in (it
//! logs that its lease ended), consumers never read a dead token, no
//! rotation completes twice, and afterwards exactly the stored tokens are
//! live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::chaos::{RETRY, Source, Tally, consume, remote_stores_toml};
use crate::support::config_toml;
use crate::support::daemon::signal;
use crate::support::world::{self, Bench, RemoteBench, Scratch};

/// Writes `config.toml`: two policies rotating every few seconds, one on
/// each store, verified by a hook that takes 3 s.
fn config(w: &RemoteBench) -> PathBuf {
    let path = w.bench.dir().join("config.toml");
    let verify = r#"[{ type = "command", command = ["/bin/sh", "-c", "sleep 3"], interval = "100ms", deadline = "30s", timeout = "10s" }]"#;
    let policy = |name: &str, dest: &str| {
        config_toml::policy_on(
            name,
            &format!("svc_{name}"),
            r#"{ interval = "6s" }"#,
            "1s",
            dest,
        ) + &format!("verify = {verify}\n{RETRY}")
    };
    let src = config_toml::motherduck_unthrottled(&w.bench.sim.base_url())
        + &config_toml::daemon(
            "orphan_min_age = \"2s\"\nsweep_interval = \"5s\"\nshutdown_timeout = \"10s\"\nlock_retry_interval = \"300ms\"\nrecheck_interval = \"1s\"\n",
        )
        + &remote_stores_toml(&w.bao, &w.moto)
        + &policy("vfence", r#"{ store = "vault", path = "fence/v" }"#)
        + &policy("afence", r#"{ store = "aws", path = "fence/a" }"#);
    std::fs::write(&path, src).unwrap();
    path
}

fn spawn(w: &RemoteBench, config: &Path, name: &str) -> tokio::process::Child {
    w.bench.bin.spawn(name, config, &["run"], None)
}

fn log(w: &RemoteBench, name: &str) -> String {
    w.bench.bin.log(&format!("{name}.err"))
}

fn logs(w: &RemoteBench) -> String {
    w.bench.bin.logs()
}

/// `(policy, rotation id)` of each line of `log` with `message`.
fn events(w: &RemoteBench, log: &str, message: &str) -> Vec<(String, String)> {
    let needle = format!(r#""message":"{message}""#);
    self::log(w, log)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            let field = |k: &str| {
                v[k].as_str()
                    .or_else(|| v["span"][k].as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("policy"), field("rotation_id"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_writes_nothing_when_it_resumes() {
    let scratch = Scratch::kept_on_failure("fencing");
    let accounts = ["svc_vfence", "svc_afence"];
    let w = Bench::with_remote_stores(scratch, &accounts, "info").await;
    let config = config(&w);
    let sources = vec![
        Source::vault(&w.bao, "fence/v"),
        Source::aws(&w.moto, "fence/a"),
    ];
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = tokio::spawn(consume(
        sources.clone(),
        w.bench.sim.sim.clone(),
        tally.clone(),
        stop.clone(),
    ));

    let mut a = spawn(&w, &config, "a");
    let mut b = spawn(&w, &config, "b");
    let daemons = [("a", &mut a), ("b", &mut b)];

    // Wait for each policy's first verification after both run, then stop
    // whichever daemon is verifying it; one policy at a time.
    let mut stopped_in = Vec::new();
    for policy in ["vfence", "afence"] {
        let verifying = |n: &str| {
            events(&w, n, "verifying the new token")
                .iter()
                .filter(|(p, _)| p == policy)
                .count()
        };
        let before: Vec<usize> = daemons.iter().map(|(n, _)| verifying(n)).collect();
        let (name, child) = {
            let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let found = daemons
                    .iter()
                    .zip(&before)
                    .find(|((n, _), b)| verifying(n) > **b)
                    .map(|(d, _)| d);
                if let Some((n, c)) = found {
                    break (*n, &**c);
                }
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "no verification of {policy}\n{}",
                    logs(&w)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // Mid-verification (the hook takes 3 s): stop it for over three
        // lease TTLs of either store.
        tokio::time::sleep(Duration::from_millis(500)).await;
        signal(child, libc::SIGSTOP);
        let resumed_at_line = {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let lines = log(&w, name).lines().count();
            signal(child, libc::SIGCONT);
            lines
        };
        stopped_in.push((policy, name, resumed_at_line));
        // Let both run on for a while.
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let other = |n: &str| if n == "a" { "b" } else { "a" };

    // Stop both, let the consumers see the end state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&a, libc::SIGTERM);
    signal(&b, libc::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(20), a.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), b.wait()).await;
    stop.store(true, Ordering::Relaxed);
    consumer.await.unwrap();

    {
        let t = tally.lock().unwrap();
        assert!(t.reads > 0, "the consumers read nothing");
        assert!(
            t.dead == 0 && t.unknown == 0,
            "consumers read dead tokens: {:#?}\n{}",
            t.examples,
            logs(&w)
        );
    }
    for (policy, name, from_line) in &stopped_in {
        // The resumed daemon's lines after SIGCONT for this policy.
        let after: Vec<String> = log(&w, name)
            .lines()
            .skip(*from_line)
            .filter(|l| l.contains(&format!(r#""policy":"{policy}""#)))
            .map(str::to_owned)
            .collect();
        // Up to that line, nothing of the interrupted pass was written.
        for l in after
            .iter()
            .take_while(|l| !l.contains("the lease ended during the pass"))
        {
            for forbidden in [
                r#""step":"journal""#,
                "a destination lacks the verified token",
                "rolling back",
                "rotation rolled back",
                "old token revoked",
                "rotation complete",
                "new token is current",
            ] {
                assert!(
                    !l.contains(forbidden),
                    "{name} wrote after resuming ({forbidden}): {l}\n{}",
                    logs(&w)
                );
            }
        }
        assert!(
            after
                .iter()
                .any(|l| l.contains("the lease ended during the pass; writing nothing more")),
            "{name} resumed without noticing its lease on {policy} ended; its lines after resuming:\n{}",
            after.join("\n")
        );
        // The other daemon took over and finished that rotation.
        assert!(
            events(&w, other(name), "rotation complete")
                .iter()
                .any(|(p, _)| p == policy),
            "{} did not finish {policy}\n{}",
            other(name),
            logs(&w)
        );
    }
    // No rotation completed twice, across both daemons.
    let mut done: HashMap<String, usize> = HashMap::new();
    for n in ["a", "b"] {
        for (_, rid) in events(&w, n, "rotation complete") {
            *done.entry(rid).or_default() += 1;
        }
    }
    done.retain(|_, c| *c > 1);
    assert!(done.is_empty(), "completed twice: {done:?}\n{}", logs(&w));
    // Nothing live beyond what the stores hold (the newest token and, in
    // a rotation's overlap, the one before).
    let http = reqwest::Client::new();
    for ((label, src), sa) in sources.iter().zip(["svc_vfence", "svc_afence"]) {
        let secret = src.read(&http).await.unwrap().expect("a token is stored");
        let stored = w.bench.sim.sim.token_by_secret(&secret).unwrap().id;
        let live = world::live_ids(&w.bench.sim.sim, sa);
        assert!(
            live.contains(&stored) && live.len() <= 2,
            "{label}: live {live:?}, stored {stored}\n{}",
            logs(&w)
        );
    }
}
