//! The Vault / OpenBao KV store, through `vaultrs`.
//!
//! A destination is a KV mount and a path in it. Consumers read the token
//! the usual way (`vault kv get -field=token <mount>/<path>`); everything
//! else the rotation needs lives beside it, as laid out below.
//!
//! # KV v2 (the default)
//!
//! For mount `M` and path `P`:
//! - `M/data/P`, latest version: the **current** record. Its data has the
//!   same fields as a file-store record: `token`, `token_id`, `token_name`,
//!   `service_account`, `token_type`, `created_at`, `expires_at`,
//!   `rotation_id`, and `ack_secret` when the policy takes
//!   acknowledgements. Nothing else: the journal is not in the data.
//! - `M/metadata/P`, `custom_metadata`: the **journal** of the current
//!   record, one string per key (Vault allows at most 512 bytes per value):
//!   `rotation_id`, `rotation_state`, `rotation_previous_token_id`,
//!   `rotation_new_token_id`, `rotation_started_at`, `rotation_updated_at`,
//!   `rotation_revoke_after`, `rotation_last_error` (cut to 512 bytes),
//!   `rotation_failures`, `rotation_retry_at`, plus
//!   `rotation_previous_version` (the KV version holding the **previous**
//!   record) and `rotation_record_version` (the KV version this journal
//!   describes). Keys that are not ours (no `rotation_` prefix) are kept
//!   on every write. Secrets never go into metadata.
//! - `M/data/P` at version `rotation_previous_version`: the **previous**
//!   record. Rollback writes that version's data back as a new version.
//! - `M/data/P.pending`: the **staged** record, a sibling secret consumers
//!   do not read; its journal is in its own `custom_metadata`. Promotion
//!   copies it to `P` and then deletes it with all its versions.
//! - `M/data/P.lock`: the coordination lease (`holder`, `acquired_at`,
//!   `expires_at`, `ttl_seconds`); see [`VaultLease`].
//!
//! Every data write carries check-and-set: `cas` is the version just read,
//! `cas=0` creates. In addition, `promote`, `set_journal`, `rollback` and
//! `finish` refuse with a `Conflict` when `P` changed since the caller's
//! last [`VaultDestination::load`], so a decision made on stale records is
//! never applied. Metadata writes have no check-and-set in Vault; they are
//! made safe by `rotation_record_version`: a journal whose version is not
//! the latest one is ignored (read as "no journal").
//!
//! ## Crash windows
//! A record and its journal are two requests. For `P` the data goes first
//! (what consumers see is the commit point): a crash in between leaves the
//! new data without a journal, which reads as "promoted, not verified"
//! while `P.pending` still holds the staged record (promotion deletes it
//! last), and the previous record is taken to be the version before. For
//! `P.pending` the journal goes first, tagged with the version about to be
//! written: a crash in between leaves nothing staged, and the new token,
//! referenced by no record, is revoked by the orphan sweep. A crash inside
//! a rollback, after the old record is current again but before its
//! journal, loses the failure count and retry time of that rotation.
//!
//! ## Limits
//! The secret's `max_versions` must keep at least two versions (Vault's
//! default keeps ten), or the previous record is pruned before a rollback
//! can restore it. Finishing a rotation leaves the revoked token in the KV
//! history; it is worthless once revoked.
//!
//! # KV v1
//!
//! KV v1 has neither versions nor check-and-set. The layout mirrors the
//! file store: `M/P` is the current record with the journal in an extra
//! `rotation` field of the data (consumers see it; `-field=token` is
//! unaffected), `M/P.pending` the staged record, `M/P.previous` the
//! previous record. Without check-and-set there is no safe lease: on a
//! KV v1 destination [`VaultDestination::try_lock`] fails with a permanent
//! error, and a policy with several replicas must take its lock from
//! another destination.
//!
//! # Authentication
//! A static token, AppRole or Kubernetes. The token is looked up (or
//! obtained by logging in) on first use, renewed once two thirds of its
//! TTL have passed, replaced by a new login when it cannot be renewed, and
//! after any `403` the request is retried once after a fresh login. The
//! decision is [`token_decision`], a pure function of the token's lease and
//! `now`; [`VaultConnection::ensure_token`] carries it out and
//! [`VaultConnection::spawn_token_renewal`] keeps an idle daemon's token
//! alive.
//!
//! # What stays outside our control
//! `vaultrs` and `reqwest` keep their own copies of request and response
//! bodies (and of the Vault token), which they do not zeroize. The copies
//! this module makes are zeroized.

mod checks;
mod connection;
mod destination;
mod kv;
mod lease;
mod record;
mod settings;
mod steps;
mod tls;
mod token;

use std::time::Duration;

pub use connection::VaultConnection;
pub use destination::{KvVersion, VaultDestination};
pub use lease::VaultLease;
pub use settings::{VaultAuth, VaultAuthError, VaultSettings, VaultSetupError};
pub use token::{TokenAction, TokenDecision, TokenLease, TokenStatus, token_decision};

/// How long a coordination lease lasts unless renewed.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(600);
/// The shortest lease accepted; shorter values are raised to this.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
