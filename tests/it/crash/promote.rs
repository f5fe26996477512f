//! `rotate` killed inside the file store's promote, in one destination or
//! either of two.

use std::time::Duration;

use serde_json::Value;

use super::{VERIFY_OK, World};

/// The second file destination the promote regression tests add.
const SECOND_DEST: (&str, &str) = (
    r#"destinations = [{ store = "local", path = "etl.json", bare_token_file = "etl.token" }]"#,
    r#"destinations = [{ store = "local", path = "etl.json", bare_token_file = "etl.token" }, { store = "local", path = "etl2.json", bare_token_file = "etl2.token" }]"#,
);

impl World {
    /// Converged in every destination named (record file, bare file): no
    /// unfinished rotation, nothing pending, the bare file equal to its
    /// record, the same token everywhere and exactly it live.
    fn converged_in(&self, dests: &[(&str, &str)]) -> Result<String, String> {
        let mut stored = None;
        for (record, bare) in dests {
            let bytes =
                std::fs::read(self.store().join(record)).map_err(|e| format!("{record}: {e}"))?;
            let cur: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            let state = cur["rotation"]["state"].as_str().unwrap_or("none");
            if state != "done" && state != "rolled_back" {
                return Err(format!("{record}: rotation unfinished: {state}"));
            }
            if self.store().join(format!("{record}.pending")).exists() {
                return Err(format!("{record}: a pending record is left"));
            }
            let held = std::fs::read_to_string(self.store().join(bare)).unwrap_or_default();
            if held.trim_end() != cur["token"].as_str().unwrap_or_default() {
                return Err(format!("{bare} differs from {record}"));
            }
            let id = cur["token_id"].as_str().unwrap_or_default().to_owned();
            match &stored {
                None => stored = Some(id),
                Some(s) if *s == id => {}
                Some(s) => return Err(format!("{record} holds {id}, another holds {s}")),
            }
        }
        let id = stored.ok_or("no destination")?;
        let live = self.live_ids();
        if live != [id.clone()] {
            return Err(format!("live tokens {live:?}, stored {id}"));
        }
        Ok(id)
    }
}

/// Kill inside the file store's promote (`MDR_CRASH_AT=point`, with `#N`
/// for the Nth destination), restart the daemon: it must finish promote in
/// every destination (record, bare file, pending removed) before the old
/// token is revoked, and then rotate no more.
async fn crash_inside_promote(point: &str, two_destinations: bool) {
    let w = World::new().await;
    let mut dests = vec![("etl.json", "etl.token")];
    let cfg = if two_destinations {
        dests.push(("etl2.json", "etl2.token"));
        w.config_edited("good", VERIFY_OK, &[SECOND_DEST])
    } else {
        w.config("good", VERIFY_OK)
    };
    w.rotate_ok("first", &cfg).await;
    let first = w
        .converged_in(&dests)
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));

    w.rotate_killed_at(&cfg, point).await;
    assert_eq!(w.issued_count(), 2, "{}", w.logs());

    let mut daemon = w.bin().spawn("daemon", &cfg, &["run"], None);
    let id = w
        .converged_after_a_pass(&mut daemon, point, |w| w.converged_in(&dests))
        .await;
    assert_ne!(
        id,
        first,
        "the interrupted rotation completes\n{}",
        w.logs()
    );
    w.assert_stored_token_works().await;
    // Completed once: the daemon does not go round verify and revoke again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = w
        .log("daemon.err")
        .matches(r#""message":"rotation complete""#)
        .count();
    assert_eq!(done, 1, "rotation completed {done} times\n{}", w.logs());
    assert_eq!(
        w.issued_count(),
        2,
        "the restart created no token\n{}",
        w.logs()
    );
    w.stop_ok(&mut daemon).await;
    w.converged_in(&dests)
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
}

/// One test per crash point inside promote: name, point, whether the
/// policy has two destinations.
macro_rules! promote_tests {
    ($($name:ident: $point:literal, $two:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_inside_promote($point, $two).await;
        }
    )*};
}

promote_tests! {
    crash_in_promote_before_the_rename: "promote-before-rename", false;
    crash_in_promote_after_the_rename: "promote-after-rename", false;
    crash_in_promote_after_the_bare_file: "promote-after-bare", false;
    crash_in_promote_after_removing_the_pending_record: "promote-after-pending", false;
    crash_in_the_first_of_two_promotes_after_the_rename: "promote-after-rename#1", true;
    crash_in_the_second_of_two_promotes_before_the_rename: "promote-before-rename#2", true;
    crash_in_the_second_of_two_promotes_after_the_rename: "promote-after-rename#2", true;
    crash_in_the_second_of_two_promotes_after_the_bare_file: "promote-after-bare#2", true;
    crash_in_the_second_of_two_promotes_after_removing_the_pending_record: "promote-after-pending#2", true;
}
