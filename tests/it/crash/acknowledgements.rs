//! Acknowledgements across a restart and in a one-shot `rotate`.

use serde_json::Value;

use crate::support::daemon::{self, PATIENCE};

use super::{ROTATE, VERIFY_OK, World};

/// The rotation id and acknowledgement secret of a record of a rotation
/// other than `first`'s.
fn awaiting_ack(cur: &Value, first: &str) -> Option<(String, String)> {
    if cur["token_id"] == first {
        return None;
    }
    let ack = cur["ack_secret"].as_str()?;
    Some((
        cur["rotation_id"].as_str().unwrap().to_owned(),
        ack.to_owned(),
    ))
}

/// The first token, from a `rotate` that must succeed and converge.
async fn first_rotation(w: &World) -> String {
    let first_cfg = w.config("first", VERIFY_OK);
    let status = w.bin().run("first", &first_cfg, ROTATE, None).await;
    assert!(status.success(), "{}", w.logs());
    w.converged().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `daemon.listen` on `port`, as a config edit.
fn listen_on(port: u16) -> String {
    format!(r#"listen = "127.0.0.1:{port}""#)
}

/// Regression (invariant 11): an acknowledgement lived only in memory. A
/// daemon restarted (kill -9, an upgrade) after a consumer acknowledged the
/// new token but before the rotation was recorded verified waited for an
/// acknowledgement the consumer would not send again, and rolled back a
/// rotation consumers had already switched to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_survives_a_restart() {
    let w = World::new().await;
    let first = first_rotation(&w).await;

    // Verification needs the consumer's acknowledgement and a second hook
    // that passes only once a file exists.
    let (gated, gate) = w.gate("20ms", "60s");
    let port = crate::support::services::free_port();
    let verify = format!(r#"[{{ type = "ack", deadline = "4s" }}, {gated}]"#);
    let listen = listen_on(port);
    let cfg = w.config_edited(
        "acked",
        &verify,
        &[
            (r#"listen = "127.0.0.1:0""#, &listen),
            (
                r#"schedule = { interval = "1d" }"#,
                r#"schedule = { interval = "2s" }"#,
            ),
        ],
    );
    let mut daemon = w.bin().spawn("daemon", &cfg, &["run"], None);
    let (rid, ack) = w
        .eventually("no promotion", async || {
            let cur = w.current()?;
            if cur["rotation"]["state"] != "promoted" {
                return None;
            }
            awaiting_ack(&cur, &first)
        })
        .await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/rotations/{rid}/ack");
    let resp = http.post(&url).bearer_auth(&ack).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", w.logs());
    // Recorded in the journal, then the daemon dies.
    w.eventually("the acknowledgement was not recorded", async || {
        (!w.current().unwrap()["rotation"]["acknowledged_at"].is_null()).then_some(())
    })
    .await;
    daemon.start_kill().unwrap();
    let _ = daemon.wait().await;

    // Restarted; the other hook passes now. No new acknowledgement comes.
    let mut daemon = w.bin().spawn("again", &cfg, &["run"], None);
    std::fs::write(&gate, "").unwrap();
    let needle = format!(r#""message":"rotation complete","policy":"etl","rotation_id":"{rid}""#);
    w.eventually("not completed", async || {
        if w.log("again.err").contains(&needle) {
            return Some(());
        }
        assert!(
            !w.log("again.err").contains("rotation rolled back"),
            "the acknowledged rotation was rolled back\n{}",
            w.logs()
        );
        None
    })
    .await;
    assert!(
        w.sim_revoked(&first),
        "the old token is revoked\n{}",
        w.logs()
    );
    // Verified: the rotation no longer takes acknowledgements.
    let resp = http.post(&url).bearer_auth(&ack).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    daemon::sigterm(&daemon);
    let _ = tokio::time::timeout(PATIENCE, daemon.wait()).await;
}

/// Regression: `rotate` of a policy verified by an acknowledgement served
/// no acknowledgement route, so it could never be acknowledged and always
/// rolled back, though the README's troubleshooting recommends it. It now
/// serves the route on `daemon.listen` while it runs; when that address is
/// taken (a daemon runs), it says so and rotates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_receives_acknowledgements_on_the_listen_address() {
    let w = World::new().await;
    let first = first_rotation(&w).await;

    let port = crate::support::services::free_port();
    let listen = listen_on(port);
    let cfg = w.config_edited(
        "acked",
        r#"[{ type = "ack", deadline = "20s" }]"#,
        &[(r#"listen = "127.0.0.1:0""#, &listen)],
    );
    let mut rotate = w.bin().spawn("acked", &cfg, ROTATE, None);
    let (rid, ack) = w
        .eventually("no promotion", async || awaiting_ack(&w.current()?, &first))
        .await;
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/rotations/{rid}/ack"))
        .bearer_auth(&ack)
        .send()
        .await
        .unwrap_or_else(|e| panic!("rotate serves no acknowledgement route: {e}\n{}", w.logs()));
    assert_eq!(resp.status(), 200);
    let status = w.bin().out.wait("acked", &mut rotate, PATIENCE).await;
    assert!(status.success(), "{status}\n{}", w.logs());
    let cur = w.assert_converged();
    assert_eq!(
        cur["rotation_id"],
        rid.as_str(),
        "the acknowledged rotation is current"
    );

    // The address taken, as by a running daemon: nothing is rotated.
    let _held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let issued = w.issued_count();
    w.run_refused("taken", &cfg, ROTATE, "taken.err", "cannot be used")
        .await;
    assert_eq!(w.issued_count(), issued, "no token created");
}
