//! Stored state written by earlier versions, read by this one (README,
//! "Compatibility"). `tests/data/state/<version>/` is a file store as that
//! version left it: records with their journals, `.previous` and
//! `.pending` copies, bare token files and lock files, in every journal
//! state a store can be found in. When the format changes, a new set is
//! added beside the old ones, which stay: each must keep reading the same.
//!
//! The 0.1.0 set was written by `rotate` against the simulator: `orders-api`
//! rotated twice (verified, in its overlap, the previous token kept),
//! `billing` rotated and then rolled back by a failing hook, and `etl`
//! killed right after staging (`MDR_CRASH_AT=after-stage`). The tokens are
//! the simulator's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");

/// A copy of a fixture store with the modes the file store insists on
/// (git keeps neither), and a configuration over it.
struct Store {
    dir: PathBuf,
}

impl Store {
    fn copy_of(version: &str) -> Store {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/state")
            .join(version);
        let dir =
            std::env::temp_dir().join(format!("mdr-state-{version}-{}", uuid::Uuid::new_v4()));
        let store = dir.join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            let dst = store.join(entry.file_name());
            std::fs::copy(entry.path(), &dst).unwrap();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let token = dir.join("admin-token");
        std::fs::write(&token, "placeholder\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The configuration the set was written with, but for the API
        // address: reading the stores needs no MotherDuck.
        std::fs::write(
            dir.join("config.toml"),
            format!(
                r#"[motherduck]
api_url = "http://127.0.0.1:9"
admin_token = {{ file = "{token}" }}

[stores.local]
type = "file"
directory = "{store}"

[[policy]]
name = "orders-api"
service_account = "svc_orders"
token_ttl = "30d"
schedule = {{ interval = "7d" }}
overlap = "1h"
verify = [{{ type = "motherduck" }}]
destinations = [{{ store = "local", path = "orders-api.json", bare_token_file = "orders-api.token" }}]

[[policy]]
name = "billing"
service_account = "svc_billing"
token_ttl = "30d"
schedule = {{ interval = "7d" }}
overlap = "1s"
verify = [{{ type = "command", command = ["/bin/true"], timeout = "5s", deadline = "10s" }}]
destinations = [{{ store = "local", path = "billing.json" }}]

[[policy]]
name = "etl"
service_account = "svc_etl"
token_ttl = "30d"
schedule = {{ interval = "7d" }}
overlap = "1h"
verify = [{{ type = "motherduck" }}]
destinations = [{{ store = "local", path = "etl.json", bare_token_file = "etl.token" }}]
"#,
                token = token.display(),
                store = store.display(),
            ),
        )
        .unwrap();
        Store { dir }
    }

    /// `status --json`'s policies, by name.
    fn status(&self) -> Value {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .args(["status", "--json"])
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "status --json: {printed}");
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}: {printed}"));
        let mut by_name = serde_json::Map::new();
        for p in report["policies"].as_array().unwrap() {
            by_name.insert(p["policy"].as_str().unwrap().to_owned(), p.clone());
        }
        Value::Object(by_name)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_file_store_written_by_0_1_0_reads_the_same() {
    let store = Store::copy_of("0.1.0");
    let s = store.status();

    // Verified and in its overlap: the new token current, the old one kept
    // as .previous until it is revoked.
    let orders = &s["orders-api"];
    assert_eq!(orders["error"], Value::Null, "{orders}");
    assert_eq!(orders["state"], "rotating (verified)", "{orders}");
    assert_eq!(orders["rotation_id"], "01a252de21c577f78b361ace36107fcd");
    assert_eq!(orders["token_id"], "29f0db3d-2db4-4137-8855-2eda4047c11a");
    assert_eq!(orders["token_created_at"], "2026-12-07T23:36:59.107Z");
    assert_eq!(orders["token_expires_at"], "2027-01-06T23:36:59.107Z");
    assert_eq!(orders["revoke_old_after"], "2026-12-08T00:36:59.272940821Z");
    assert_eq!(
        orders["destinations"][0],
        json!({
            "destination": format!("file:{}", store.dir.join("store/orders-api.json").display()),
            "current_token_id": "29f0db3d-2db4-4137-8855-2eda4047c11a",
            "pending_token_id": null,
            "previous_token_id": "b896e291-7265-40a9-b1e2-c77ef647f381",
        })
    );

    // Rolled back: the first token current, the failure and its count kept.
    let billing = &s["billing"];
    assert_eq!(billing["error"], Value::Null, "{billing}");
    assert_eq!(billing["state"], "idle", "{billing}");
    assert_eq!(billing["token_id"], "8330dbf4-d787-47ec-b2c6-003daf03305e");
    assert_eq!(billing["consecutive_failures"], 1, "{billing}");
    assert!(
        billing["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("verify: command hook `/bin/sh` failed")),
        "{billing}"
    );

    // Killed after staging: the staged token pending beside the current
    // one, the rotation still active, to be resumed.
    let etl = &s["etl"];
    assert_eq!(etl["error"], Value::Null, "{etl}");
    assert_eq!(etl["state"], "rotating (staged)", "{etl}");
    assert_eq!(etl["rotation_id"], "01a252de39f67042ab942b237bc2fed1");
    assert_eq!(etl["token_id"], "7121d78e-4227-4e8e-a141-37078dbd4ebc");
    assert_eq!(
        etl["destinations"][0]["pending_token_id"],
        "a0de94c1-7acd-48f1-8fc1-0954cdb7bae7"
    );

    // Reading changed nothing.
    let again = store.status();
    for p in ["orders-api", "billing", "etl"] {
        assert_eq!(again[p]["state"], s[p]["state"]);
        assert_eq!(again[p]["destinations"], s[p]["destinations"]);
    }
}
