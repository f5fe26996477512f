//! The AWS Secrets Manager store.
//!
//! # Layout
//!
//! For a destination secret named `N` (a name, not an ARN):
//!
//! - **`N`** holds the token records, one secret *version* per rotation.
//!   Each version's `SecretString` is the same JSON record the file store
//!   writes (`token`, `token_id`, `token_name`, `service_account`,
//!   `token_type`, `created_at`, `expires_at`, `rotation_id`, `rotation`,
//!   and `ack_secret` when the policy takes acknowledgements). Consumers run
//!   `aws secretsmanager get-secret-value --secret-id N --query SecretString`
//!   and read `.token`. The staging labels are the ones AWS uses for its
//!   own rotations:
//!   - `AWSCURRENT`: what consumers read;
//!   - `AWSPENDING`: the staged record of a rotation under way;
//!   - `AWSPREVIOUS`: the record replaced by the last promotion, kept until
//!     its token is revoked (`finish` then removes the label).
//!
//!   A version's id is derived from its rotation id ([`version_id_for`]) and
//!   is passed as `ClientRequestToken`, so repeating a write of the same
//!   rotation never creates a second version.
//! - **`N.journal`** holds the journal of the latest rotation as JSON
//!   `{"version_id": <version of N it annotates>, "rotation": <journal>}`.
//!   Versions of `N` cannot be edited, and the journal changes after the
//!   record is written (promoted, verified, done, rolled back), so those
//!   changes go here, never touching what consumers read. The journal holds
//!   no secret. The record's own `rotation` field keeps the journal as it
//!   was at staging time; it is what a staged or freshly promoted record
//!   reports until `N.journal` annotates that version.
//! - **`N.lock`** is the coordination lock (see below). It holds no secret.
//!
//! Tags are not used for the journal: tag values are limited to 256
//! characters and a small character set, and a journal's `last_error` does
//! not fit.
//!
//! # Reading
//!
//! `DescribeSecret` gives `VersionIdsToStages`; each labelled version is then
//! read by its `VersionId`, and `N.journal` with an explicit
//! `VersionStage=AWSCURRENT`. `interpret` (in `labels.rs`) turns that
//! snapshot into a [`DestinationView`](super::DestinationView) with the
//! file store's meaning. Every multi-call operation is ordered so that each
//! intermediate state, should the process die there, reads as a state the
//! rotation plan continues from.
//!
//! # Coordination
//!
//! `try_lock` uses two atomic Secrets Manager primitives, never a read
//! followed by a blind write:
//!
//! - the first holder ever creates `N.lock` with `CreateSecret`: creation
//!   is create-if-absent, so of two concurrent creators exactly one succeeds
//!   and the other gets `ResourceExistsException`;
//! - afterwards the lease value (`holder`, `lease_id`, `expires_at`,
//!   `released`) lives in the `AWSCURRENT` version of `N.lock`. A contender
//!   that reads a released or expired lease writes its own lease as a new
//!   version (labelled `AWSPENDING`, so it is inert) and then calls
//!   `UpdateSecretVersionStage(AWSCURRENT, MoveToVersionId = its version,
//!   RemoveFromVersionId = the version it read)`. Secrets Manager applies
//!   that move only if `AWSCURRENT` is still attached to the version named
//!   in `RemoveFromVersionId`, and rejects it with
//!   `InvalidParameterException` otherwise: a compare-and-swap on the label.
//!   Of several contenders that read the same version, one wins. Renewal
//!   and release are the same compare-and-swap from the holder's own
//!   version, so a holder whose lease was taken over can neither extend nor
//!   release the new holder's lease.
//!
//! Release swaps `AWSCURRENT` to a fixed "released" version (written once,
//! labelled `RELEASED`), so it adds no version. The lock secret is never
//! deleted: `DeleteSecret` takes no precondition, so a holder whose lease
//! had expired would delete its successor's lock, and AWS refuses to
//! re-create a force-deleted name for a while.
//!
//! # Version budget
//!
//! AWS advises against writing a secret more often than once every 10
//! minutes, sustained: it removes unlabelled versions only once they are 24
//! hours old, and a secret has a quota of versions. Each rotation writes one
//! version of `N` and about three of `N.journal`. Each lease taken from a
//! free or expired lock writes one version of `N.lock`, and each renewal
//! (every third of the lock TTL, default 10 minutes) one more; a lock that is
//! held costs a contender only reads.
//!
//! # IAM
//!
//! The least-privilege policy for one destination secret `N` (without a
//! customer managed KMS key; with one, also allow `kms:Decrypt` and
//! `kms:GenerateDataKey` on that key, conditioned on `kms:ViaService`
//! `secretsmanager.<region>.amazonaws.com`):
//!
//! ```json
//! {
//!   "Version": "2012-10-17",
//!   "Statement": [
//!     {
//!       "Sid": "RotateTheTokenSecret",
//!       "Effect": "Allow",
//!       "Action": [
//!         "secretsmanager:DescribeSecret",
//!         "secretsmanager:GetSecretValue",
//!         "secretsmanager:PutSecretValue",
//!         "secretsmanager:UpdateSecretVersionStage"
//!       ],
//!       "Resource": [
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N-??????",
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N.journal-??????",
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N.lock-??????"
//!       ]
//!     },
//!     {
//!       "Sid": "CreateCompanionSecrets",
//!       "Effect": "Allow",
//!       "Action": ["secretsmanager:CreateSecret", "secretsmanager:TagResource"],
//!       "Resource": [
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N.journal-??????",
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N.lock-??????"
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! With `create_if_missing`, add `N-??????` to the second statement.

mod calls;
mod connection;
mod destination;
mod labels;
mod lease;
mod record;
mod steps;

use std::time::Duration;

pub use connection::{AwsConnection, AwsConnectionSettings, AwsSetupError};
pub use destination::AwsDestination;
pub use lease::AwsLease;
pub use record::version_id_for;

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";
/// How long a lease lasts without renewal, unless configured.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(600);
/// Secrets Manager's quota of new versions of one secret within 24 hours.
pub const DEFAULT_VERSION_BUDGET: u32 = 100;
