//! Many policies: at start-up the daemon begins due rotations at once (the
//! orphan sweep runs beside them and never makes them wait), and the
//! one-shot `rotate --all` and `sweep` work on policies side by side.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use motherduck_rotator::motherduck::Endpoint;
use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{Simulator, SimulatorOptions};

use crate::support::services::free_port;

const POLICIES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_rotation_does_not_wait_for_the_start_up_sweep() {
    let sim = Simulator::spawn(SimulatorOptions::default()).await.unwrap();
    // Every call takes 20 ms, so sweeping all policies one after another
    // takes at least 0.8 s.
    sim.sim
        .set_latency(Duration::from_millis(20), Duration::ZERO);
    let dir = many_policies(&sim, POLICIES, 4);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("run")
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Poll (5 ms steps, bounded) for the first token created.
    let mut swept_before_first_create = None;
    for _ in 0..6000 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited: {status}");
        }
        let listed = sim.sim.request_count(Endpoint::ListTokens);
        if sim.sim.request_count(Endpoint::CreateToken) > 0 {
            swept_before_first_create = Some(listed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let listed = swept_before_first_create.expect("a token is created within 30 s");
    assert!(
        listed < POLICIES as u64 / 2,
        "the first rotation waited for the sweep: {listed} of {POLICIES} policies' tokens were listed before it"
    );
    // The sweep still covers every policy.
    for _ in 0..6000 {
        if sim.sim.request_count(Endpoint::ListTokens) >= POLICIES as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        sim.sim.request_count(Endpoint::ListTokens) >= POLICIES as u64,
        "the start-up sweep did not reach every policy"
    );
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory with the admin token and a configuration of `n` policies
/// (`p0`..), each on its own service account, against `sim`.
fn many_policies(
    sim: &motherduck_rotator::simulator::RunningSimulator,
    n: usize,
    concurrency: usize,
) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mdr-scale-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    crate::support::write_secret(dir.join("admin.token"), sim.admin_token.expose_secret());
    let mut config = format!(
        r#"
[motherduck]
api_url = "{url}"
admin_token = {{ file = "admin.token" }}
rate_limit_per_second = 1000

[daemon]
listen = "127.0.0.1:{port}"
rotation_concurrency = {concurrency}

[stores.local]
type = "file"
directory = "store"
"#,
        url = sim.base_url(),
        port = free_port(),
    );
    for i in 0..n {
        sim.sim.add_service_account(&format!("svc_{i}"));
        write!(
            config,
            r#"
[[policy]]
name = "p{i}"
service_account = "svc_{i}"
token_ttl = "1h"
schedule = {{ interval = "1d" }}
overlap = "0s"
destinations = [{{ store = "local", path = "p{i}.json" }}]
"#
        )
        .unwrap();
    }
    std::fs::write(dir.join("config.toml"), config).unwrap();
    dir
}

fn command(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_all_and_sweep_work_on_policies_side_by_side() {
    let sim = Simulator::spawn(SimulatorOptions::default()).await.unwrap();
    sim.sim
        .set_latency(Duration::from_millis(50), Duration::ZERO);
    let dir = many_policies(&sim, 12, 4);

    let out = command(&dir, &["rotate", "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every policy reports its first token, each on its own line.
    for i in 0..12 {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("p{i}: rotated: token "))
                    && l.ends_with("(the policy's first token)")),
            "p{i} not reported rotated:\n{stdout}"
        );
    }
    for i in 0..12 {
        assert_eq!(sim.sim.live_tokens(&format!("svc_{i}")).len(), 1, "svc_{i}");
    }
    // Four policies (`rotation_concurrency`) were in MotherDuck at once.
    assert_eq!(sim.sim.max_in_flight(), 4, "{stdout}");
    let rotating = stdout
        .lines()
        .take_while(|l| !l.contains(": rotated: "))
        .filter(|l| l.ends_with(": rotating"))
        .count();
    assert_eq!(
        rotating, 4,
        "four start before the first is done:\n{stdout}"
    );

    let listed = sim.sim.request_count(Endpoint::ListTokens);
    sim.sim.reset_max_in_flight();
    let out = command(&dir, &["sweep"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.ends_with(": no orphaned tokens"))
            .count(),
        12,
        "{stdout}"
    );
    assert!(sim.sim.request_count(Endpoint::ListTokens) >= listed + 12);
    assert_eq!(
        sim.sim.max_in_flight(),
        4,
        "the sweep keeps to the same bound"
    );

    // --concurrency overrides the bound, for rotate and sweep alike.
    sim.sim.reset_max_in_flight();
    let out = command(&dir, &["rotate", "--all", "--concurrency", "12"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let most = sim.sim.max_in_flight();
    assert!(
        most > 4 && most <= 12,
        "{most} requests at once: more than the configured 4, at most 12"
    );
    sim.sim.reset_max_in_flight();
    let out = command(&dir, &["sweep", "--concurrency", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(sim.sim.max_in_flight(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The benchmark harness runs (tiny sizes) and prints its table; the
/// figures are not judged here.
#[test]
fn the_benchmark_harness_runs_and_prints_its_table() {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench.py"))
        .args(["--smoke", "--bin", env!("CARGO_BIN_EXE_motherduck-rotator")])
        .output()
        .expect("python3 runs scripts/bench.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| what"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let number = starts_with_number;
    for (row, unit) in [
        ("one rotation (`rotate`, overlap 0)", "ms"),
        ("`rotate --all`, 5 policies, defaults", "s"),
        ("`rotate --all`, 5 policies, 1,000 req/s", "s"),
        (
            "`rotate --all`, 5 policies, 1,000 req/s, --concurrency 64",
            "s",
        ),
        ("20: start to first token created", "s"),
        ("20: start to /readyz 200", "s"),
        ("20: all rotated", "s"),
        ("20: achieved rate / limit", ""),
        ("20: memory peak / idle", "MiB"),
        ("20: threads (max)", ""),
        ("20: idle CPU", "% of a core"),
        ("20: /metrics", "series"),
        ("`validate`, 20 policies", "s"),
    ] {
        let found = rows
            .iter()
            .find(|r| r[0] == row)
            .unwrap_or_else(|| panic!("no row `{row}` in:\n{stdout}"));
        assert!(
            number(found[1]) && found[1].ends_with(unit),
            "row `{row}` has no figure in `{unit}`: {found:?}"
        );
    }
}

/// Whether `s` starts with a decimal number.
fn starts_with_number(s: &str) -> bool {
    let digits = s
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .count();
    digits > 0 && s[..digits].parse::<f64>().is_ok()
}
