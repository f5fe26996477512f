// Kept whole: about 600 lines of one concern (the file store), then its tests.
//! The local file store: one JSON record per destination in an owner-only
//! directory.
//!
//! For a destination file `P`:
//! - `P` is the current record, which consumers read (`.token`);
//! - `P.pending` is a staged record; promotion renames it over `P`;
//! - `P.previous` keeps the replaced record until its token is revoked;
//! - `P.lock` is the coordination lock (an exclusive `flock`), never
//!   deleted, so two daemons sharing the directory rotate one at a time;
//! - an optional bare-token file beside `P` holds just the current secret,
//!   for applications that read a plain token from a mounted volume;
//! - an optional env file beside `P` holds `MOTHERDUCK_TOKEN=<token>`, for
//!   systemd's `EnvironmentFile=` and docker's `--env-file`.
//!
//! Every write goes to a temporary file (mode 0600), is fsynced, renamed
//! over its target, and the directory is fsynced, so a crash leaves either
//! the old or the new file, never a torn one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::record::StoredRecord;
use super::{DestinationView, Journal, NewRecord, Slot, StoreError, StoreErrorKind, StoreOp};
use crate::secret::{ExposeSecret, SecretString};

/// A file destination: `directory/file`, plus an optional bare-token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDestination {
    /// The configured store's name, for messages.
    pub store: String,
    pub directory: PathBuf,
    /// A plain file name inside `directory`.
    pub file: String,
    /// A plain file name inside `directory` for the bare token.
    pub bare_token_file: Option<String>,
    /// A plain file name inside `directory` for `MOTHERDUCK_TOKEN=<token>`.
    pub env_file: Option<String>,
}

/// The variable an env file sets: the name the MotherDuck DuckDB
/// extension reads.
pub const ENV_FILE_VARIABLE: &str = "MOTHERDUCK_TOKEN";

/// Directories and destinations (record paths) with a check under way.
static CHECKS_RUNNING: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
    std::sync::LazyLock::new(Default::default);

/// Marks a check finished when dropped.
struct CheckRunning(PathBuf);

impl Drop for CheckRunning {
    fn drop(&mut self) {
        CHECKS_RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// A readiness probe file older than this was left by a check that was
/// cut off; checks write and remove theirs within milliseconds.
const PROBE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The hidden entries (names starting with `.`, the only names a leftover
/// temporary file or probe has) of a store directory, with their
/// modification times.
type HiddenEntries = std::sync::Arc<Vec<(String, Option<std::time::SystemTime>)>>;

/// Hidden-entry listings of store directories, shared by every
/// destination in the directory: the orphan sweep asks once per policy, and
/// listing a directory of 20,000 records for each of 10,000 policies made
/// the sweep quadratic. A listing serves for [`HIDDEN_LISTING_TTL`] and
/// only while this process has started no write since (its own writes are
/// what could add a temporary file meanwhile; another process's show at the
/// next listing). Removing leftovers always lists afresh.
static HIDDEN_LISTINGS: std::sync::LazyLock<std::sync::Mutex<HiddenListings>> =
    std::sync::LazyLock::new(Default::default);

/// By directory: when it was listed, [`WRITES_STARTED`] then, and what it
/// held.
type HiddenListings = std::collections::HashMap<PathBuf, (std::time::Instant, u64, HiddenEntries)>;

/// Writes started by this process, for [`HIDDEN_LISTINGS`].
static WRITES_STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long a hidden-entry listing serves.
const HIDDEN_LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// `uuid::Uuid::simple()` text: 32 lowercase hex digits.
fn is_uuid_simple(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads a whole file without following a symbolic link at `path`: the
/// directory may be shared with the application (a sidecar's volume), and
/// a link planted there must not make the daemon read, or with the lock
/// file truncate, a file elsewhere.
fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
    let mut f = opts.open(path)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Attempts at taking a busy lock, 10 ms apart.
const LOCK_ATTEMPTS: u32 = 5;

/// Holds the destination's `flock` until dropped.
#[derive(Debug)]
pub struct FileLease {
    _file: File,
    /// An `flock` lasts while the process holds it: never lost.
    fence: crate::stores::Fence,
}

impl FileLease {
    /// What the holder checks before each write; it never ends while the
    /// lock is held.
    pub fn fence(&self) -> crate::stores::Fence {
        self.fence.clone()
    }
}

impl FileDestination {
    pub fn label(&self) -> String {
        format!("file:{}", self.path().display())
    }

    pub fn path(&self) -> PathBuf {
        self.directory.join(&self.file)
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        self.directory.join(format!("{}.{suffix}", self.file))
    }

    fn bare_path(&self) -> Option<PathBuf> {
        self.bare_token_file
            .as_ref()
            .map(|f| self.directory.join(f))
    }

    /// The files consumers read beside the record, each with what it holds
    /// for `token`: the bare token, and the env file's assignment.
    fn consumer_files(&self, token: &SecretString) -> Vec<(PathBuf, Zeroizing<Vec<u8>>)> {
        let mut files = Vec::new();
        if let Some(bare) = self.bare_path() {
            let mut bytes = Zeroizing::new(token.expose_secret().as_bytes().to_vec());
            bytes.push(b'\n');
            files.push((bare, bytes));
        }
        if let Some(env) = &self.env_file {
            let line = format!("{ENV_FILE_VARIABLE}={}\n", token.expose_secret());
            files.push((
                self.directory.join(env),
                Zeroizing::new(Zeroizing::new(line).as_bytes().to_vec()),
            ));
        }
        files
    }

    fn err(&self, op: StoreOp, kind: StoreErrorKind, message: String) -> StoreError {
        StoreError::new(self.label(), op, kind, message)
    }

    fn io_err(&self, op: StoreOp, path: &Path, e: &std::io::Error) -> StoreError {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return self.err(
                op,
                StoreErrorKind::Permanent,
                format!(
                    "`{}` is a symbolic link; the store does not follow links (another process sharing the directory could point it anywhere): replace it with a plain file or remove it",
                    path.display()
                ),
            );
        }
        let kind = match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                StoreErrorKind::Permanent
            }
            _ => StoreErrorKind::Transient,
        };
        self.err(op, kind, format!("`{}`: {e}", path.display()))
    }

    /// Runs blocking file IO off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        op: StoreOp,
        f: impl FnOnce(&FileDestination, StoreOp) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || f(&this, op)).await {
            Ok(r) => r,
            Err(e) => Err(self.err(
                op,
                StoreErrorKind::Transient,
                format!("IO task failed: {e}"),
            )),
        }
    }

    /// Creates the directory owner-only if missing; refuses one that group
    /// or others can access, since it holds secrets.
    fn ensure_dir(&self, op: StoreOp) -> Result<(), StoreError> {
        let dir = &self.directory;
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(self.err(
                    op,
                    StoreErrorKind::Permanent,
                    format!("`{}` is not a directory", dir.display()),
                ));
            }
            Ok(m) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = m.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        return Err(self.err(
                            op,
                            StoreErrorKind::Permanent,
                            format!(
                                "directory `{}` is accessible by group or others (mode {mode:o}); it holds secrets, make it owner-only (chmod 700)",
                                dir.display()
                            ),
                        ));
                    }
                }
                #[cfg(not(unix))]
                let _ = m;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = std::fs::DirBuilder::new();
                b.recursive(true);
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
                b.create(dir).map_err(|e| self.io_err(op, dir, &e))?;
            }
            Err(e) => return Err(self.io_err(op, dir, &e)),
        }
        Ok(())
    }

    fn read_record(&self, op: StoreOp, path: &Path) -> Result<Option<StoredRecord>, StoreError> {
        let bytes = match read_nofollow(path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_err(op, path, &e)),
        };
        StoredRecord::parse(&bytes).map(Some).map_err(|at| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("`{}` is not a valid token record ({at})", path.display()),
            )
        })
    }

    /// The current record, which must exist.
    fn current_record(&self, op: StoreOp) -> Result<StoredRecord, StoreError> {
        self.read_record(op, &self.path())?
            .ok_or_else(|| self.err(op, StoreErrorKind::Corrupt, "no current record".into()))
    }

    /// Writes `cur` back as the current record with `journal`, unless it
    /// holds that journal already.
    fn rewrite_journal(
        &self,
        op: StoreOp,
        cur: &mut StoredRecord,
        journal: &Journal,
    ) -> Result<(), StoreError> {
        if cur.rotation.as_ref() != Some(journal) {
            cur.rotation = Some(journal.clone());
            self.write_atomic(op, &self.path(), &cur.to_pretty_bytes())?;
        }
        Ok(())
    }

    /// Writes `bytes` to `target` atomically with mode 0600.
    fn write_atomic(&self, op: StoreOp, target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        WRITES_STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tmp = self.directory.join(format!(
            ".{}.tmp-{}",
            target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, target)?;
            File::open(&self.directory)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.io_err(op, target, &e)
        })
    }

    /// Shows that the directory takes new files, leaving none behind. An
    /// unnamed file (`O_TMPFILE`) is written and synced, and vanishes when
    /// closed, or when the process dies: a check killed half-way leaves no
    /// file for the sweep. Filesystems without unnamed files get a named
    /// probe, created and removed (the sweep removes one a killed check
    /// left once it is stale).
    fn probe_writable(&self) -> Result<(), StoreError> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let unnamed = OpenOptions::new()
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(&self.directory);
            match unnamed {
                Ok(mut f) => {
                    return f
                        .write_all(b"ok\n")
                        .and_then(|()| f.sync_all())
                        .map(|()| crate::crash::point("check-probe-written"))
                        .map_err(|e| self.io_err(StoreOp::Check, &self.directory, &e));
                }
                // No unnamed files here (an older kernel or a filesystem
                // without them): fall back to a named probe.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                    ) => {}
                Err(e) => return Err(self.io_err(StoreOp::Check, &self.directory, &e)),
            }
        }
        let probe = self
            .directory
            .join(format!(".probe-{}", uuid::Uuid::new_v4().simple()));
        self.write_atomic(StoreOp::Check, &probe, b"ok\n")?;
        crate::crash::point("check-probe-written");
        self.remove(StoreOp::Check, &probe)
    }

    fn remove(&self, op: StoreOp, path: &Path) -> Result<(), StoreError> {
        match std::fs::remove_file(path) {
            Ok(()) => File::open(&self.directory)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io_err(op, &self.directory, &e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err(op, path, &e)),
        }
    }

    /// Writes the bare-token file and the env file (those the destination
    /// has), each atomically.
    fn write_bare(&self, op: StoreOp, rec: &StoredRecord) -> Result<(), StoreError> {
        for (path, bytes) in self.consumer_files(&rec.token) {
            self.write_atomic(op, &path, &bytes)?;
        }
        Ok(())
    }

    /// Whether the bare-token file and the env file (those the destination
    /// has) hold `rec`'s token.
    fn bare_holds(&self, op: StoreOp, rec: &StoredRecord) -> Result<bool, StoreError> {
        for (path, want) in self.consumer_files(&rec.token) {
            let held = match read_nofollow(&path) {
                Ok(b) => Zeroizing::new(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(self.io_err(op, &path, &e)),
            };
            if *held != *want {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes the files consumers read beside the record unless they
    /// already hold `rec`'s token.
    fn ensure_bare(&self, op: StoreOp, rec: &StoredRecord) -> Result<(), StoreError> {
        if self.bare_holds(op, rec)? {
            return Ok(());
        }
        self.write_bare(op, rec)
    }

    pub async fn load(&self) -> Result<DestinationView, StoreError> {
        self.blocking(StoreOp::Load, |d, op| {
            let current = d.read_record(op, &d.path())?;
            // The bare file is what many consumers read: a record whose
            // token it does not hold yet is not fully current.
            let current_partial = match &current {
                Some(cur) => !d.bare_holds(op, cur)?,
                None => false,
            };
            Ok(DestinationView {
                current: current.map(|r| r.view()),
                pending: d.read_record(op, &d.sibling("pending"))?.map(|r| r.view()),
                previous: d.read_record(op, &d.sibling("previous"))?.map(|r| r.view()),
                current_partial,
            })
        })
        .await
    }

    pub async fn read_secret(
        &self,
        slot: Slot,
        rotation_id: &str,
    ) -> Result<Option<(SecretString, Option<SecretString>)>, StoreError> {
        let rotation_id = rotation_id.to_owned();
        self.blocking(StoreOp::ReadSecret, move |d, op| {
            let path = match slot {
                Slot::Current => d.path(),
                Slot::Pending => d.sibling("pending"),
            };
            Ok(d.read_record(op, &path)?
                .filter(|r| r.rotation_id == rotation_id)
                .map(|r| (r.token, r.ack_secret)))
        })
        .await
    }

    pub async fn stage(&self, record: &NewRecord) -> Result<(), StoreError> {
        let rec = StoredRecord::from_new(record);
        self.blocking(StoreOp::Stage, move |d, op| {
            d.ensure_dir(op)?;
            d.write_atomic(op, &d.sibling("pending"), &rec.to_pretty_bytes())
        })
        .await
    }

    pub async fn promote(&self, journal: &Journal) -> Result<(), StoreError> {
        let journal = journal.clone();
        self.blocking(StoreOp::Promote, move |d, op| {
            let current = d.read_record(op, &d.path())?;
            let pending = d.read_record(op, &d.sibling("pending"))?;
            let rid = &journal.rotation_id;
            if let Some(cur) = current.as_ref().filter(|c| &c.rotation_id == rid) {
                // Already promoted (a repeat after a crash): finish the
                // steps that may not have happened.
                d.write_bare(op, cur)?;
                if pending.as_ref().is_some_and(|p| &p.rotation_id == rid) {
                    d.remove(op, &d.sibling("pending"))?;
                }
                return Ok(());
            }
            let Some(mut new) = pending.filter(|p| &p.rotation_id == rid) else {
                return Err(d.err(
                    op,
                    StoreErrorKind::Corrupt,
                    format!("no staged record for rotation `{rid}`"),
                ));
            };
            if let Some(cur) = &current {
                d.write_atomic(op, &d.sibling("previous"), &cur.to_pretty_bytes())?;
            }
            crate::crash::point("promote-before-rename");
            new.rotation = Some(journal.clone());
            d.write_atomic(op, &d.path(), &new.to_pretty_bytes())?;
            crate::crash::point("promote-after-rename");
            d.write_bare(op, &new)?;
            crate::crash::point("promote-after-bare");
            d.remove(op, &d.sibling("pending"))?;
            crate::crash::point("promote-after-pending");
            Ok(())
        })
        .await
    }

    pub async fn set_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        let journal = journal.clone();
        self.blocking(StoreOp::Journal, move |d, op| {
            d.rewrite_journal(op, &mut d.current_record(op)?, &journal)
        })
        .await
    }

    pub async fn rollback(&self, journal: &Journal) -> Result<(), StoreError> {
        let journal = journal.clone();
        self.blocking(StoreOp::Rollback, move |d, op| {
            let rid = &journal.rotation_id;
            let current = d.read_record(op, &d.path())?;
            let previous = d.read_record(op, &d.sibling("previous"))?;
            match current {
                Some(cur) if &cur.rotation_id == rid => match previous {
                    Some(mut prev) => {
                        prev.rotation = Some(journal.clone());
                        d.write_atomic(op, &d.path(), &prev.to_pretty_bytes())?;
                        d.write_bare(op, &prev)?;
                        d.remove(op, &d.sibling("previous"))?;
                    }
                    None => {
                        // The first token of this destination: there is no
                        // older one to restore, and the new one is about to
                        // be revoked, so nothing usable remains.
                        d.remove(op, &d.path())?;
                        if let Some(bare) = d.bare_path() {
                            d.remove(op, &bare)?;
                        }
                        if let Some(env) = &d.env_file {
                            d.remove(op, &d.directory.join(env))?;
                        }
                    }
                },
                Some(mut cur) => {
                    d.rewrite_journal(op, &mut cur, &journal)?;
                    // A repeat after a restore that stopped between the
                    // record and the bare file: the bare file may still hold
                    // the new token, which is about to be revoked.
                    d.ensure_bare(op, &cur)?;
                }
                None => {}
            }
            let pending = d.read_record(op, &d.sibling("pending"))?;
            if pending.is_some_and(|p| &p.rotation_id == rid) {
                d.remove(op, &d.sibling("pending"))?;
            }
            Ok(())
        })
        .await
    }

    pub async fn finish(&self, journal: &Journal) -> Result<(), StoreError> {
        let journal = journal.clone();
        self.blocking(StoreOp::Finish, move |d, op| {
            d.rewrite_journal(op, &mut d.current_record(op)?, &journal)?;
            d.remove(op, &d.sibling("previous"))
        })
        .await
    }

    /// Whether `name` is a temporary file of this destination's own
    /// writes: `.<target>.tmp-<32 hex digits>` for the record, its pending
    /// and previous copies and the bare-token file.
    fn is_own_temp(&self, name: &str) -> bool {
        let mut targets = vec![
            self.file.clone(),
            format!("{}.pending", self.file),
            format!("{}.previous", self.file),
        ];
        targets.extend(self.bare_token_file.clone());
        targets.extend(self.env_file.clone());
        targets.iter().any(|t| {
            name.strip_prefix('.')
                .and_then(|n| n.strip_prefix(t.as_str()))
                .and_then(|n| n.strip_prefix(".tmp-"))
                .is_some_and(is_uuid_simple)
        })
    }

    /// Whether `name` is a readiness probe (or its temporary file) that is
    /// older than any probe still being written. Probes are written
    /// without the lock, so only their age shows they were left behind.
    fn is_stale_probe(name: &str, modified: Option<std::time::SystemTime>) -> bool {
        let probe = |n: &str| n.strip_prefix(".probe-").is_some_and(is_uuid_simple);
        let named = probe(name)
            || name.strip_prefix('.').is_some_and(|n| {
                n.split_once(".tmp-")
                    .is_some_and(|(p, t)| probe(p) && is_uuid_simple(t))
            });
        named
            && modified
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= PROBE_MAX_AGE)
    }

    /// The directory's hidden entries: a listing less than
    /// [`HIDDEN_LISTING_TTL`] old with no write of this process since, unless
    /// `fresh`.
    fn hidden_entries(&self, op: StoreOp, fresh: bool) -> Result<HiddenEntries, StoreError> {
        use std::sync::atomic::Ordering;
        let writes = WRITES_STARTED.load(Ordering::SeqCst);
        let listings = || {
            HIDDEN_LISTINGS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if !fresh
            && let Some((at, w, entries)) = listings().get(&self.directory)
            && *w == writes
            && at.elapsed() < HIDDEN_LISTING_TTL
        {
            return Ok(entries.clone());
        }
        let started = std::time::Instant::now();
        let entries = match std::fs::read_dir(&self.directory) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(HiddenEntries::default());
            }
            Err(e) => return Err(self.io_err(op, &self.directory, &e)),
        };
        let mut hidden = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_err(op, &self.directory, &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // The records are skipped without a `stat`.
            if !name.starts_with('.') {
                continue;
            }
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            hidden.push((name.to_owned(), modified));
        }
        let hidden = HiddenEntries::new(hidden);
        listings().insert(self.directory.clone(), (started, writes, hidden.clone()));
        Ok(hidden)
    }

    pub async fn leftovers(&self, remove: bool) -> Result<usize, StoreError> {
        self.blocking(StoreOp::Check, move |d, op| {
            let mut found = 0;
            for (name, modified) in d.hidden_entries(op, remove)?.iter() {
                if !d.is_own_temp(name) && !Self::is_stale_probe(name, *modified) {
                    continue;
                }
                found += 1;
                if remove {
                    let path = d.directory.join(name);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(d.io_err(op, &path, &e)),
                    }
                }
            }
            if remove && found > 0 {
                File::open(&d.directory)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| d.io_err(op, &d.directory, &e))?;
            }
            Ok(found)
        })
        .await
    }

    pub async fn try_lock(&self, holder: &str) -> Result<Option<FileLease>, StoreError> {
        let holder = holder.to_owned();
        self.blocking(StoreOp::Lock, move |d, op| {
            d.ensure_dir(op)?;
            let path = d.sibling("lock");
            let mut opts = OpenOptions::new();
            opts.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
            }
            let mut file = opts.open(&path).map_err(|e| d.io_err(op, &path, &e))?;
            // A flock is shared with any child forked while the lock file
            // was open, until that child execs (the descriptor is
            // close-on-exec). A hook started at the moment another policy
            // released its lock can therefore hold it for a few
            // milliseconds; a short retry rides that out, while a real
            // holder (a rotation in progress) keeps it far longer.
            for attempt in 0..LOCK_ATTEMPTS {
                match file.try_lock() {
                    Ok(()) => {
                        // Who holds it, for an operator looking at the file.
                        let _ = file.set_len(0);
                        let _ = writeln!(file, "{holder} pid={}", std::process::id());
                        return Ok(Some(FileLease {
                            _file: file,
                            fence: crate::stores::Fence::unbounded(d.label()),
                        }));
                    }
                    Err(std::fs::TryLockError::WouldBlock) if attempt + 1 < LOCK_ATTEMPTS => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => return Err(d.io_err(op, &path, &e)),
                }
            }
            Ok(None)
        })
        .await
    }

    /// The whole check: [`check_directory`](Self::check_directory), then
    /// [`check_records`](Self::check_records).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.check_directory().await?;
        self.check_records().await
    }

    /// The directory exists, is owner-only and takes new files. Shared by
    /// every destination in the directory, so readiness runs it once per
    /// directory, not once per policy.
    pub async fn check_directory(&self) -> Result<(), StoreError> {
        let done = self.check_running(self.directory.clone(), "directory")?;
        self.blocking(StoreOp::Check, move |d, op| {
            let _done = done;
            d.ensure_dir(op)?;
            d.probe_writable()
        })
        .await
    }

    /// This destination's records (current, pending, previous) parse.
    pub async fn check_records(&self) -> Result<(), StoreError> {
        let done = self.check_running(self.path(), "destination")?;
        self.blocking(StoreOp::Check, move |d, op| {
            let _done = done;
            d.read_record(op, &d.path())?;
            d.read_record(op, &d.sibling("pending"))?;
            d.read_record(op, &d.sibling("previous"))?;
            Ok(())
        })
        .await
    }

    /// Marks a check of `key` under way until the returned guard drops. A
    /// check cut off by the readiness deadline keeps its blocking thread
    /// until the filesystem answers; on a hung mount, repeated checks would
    /// pile such threads up. So one at a time per key.
    fn check_running(&self, key: PathBuf, what: &str) -> Result<CheckRunning, StoreError> {
        let mut running = CHECKS_RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !running.insert(key.clone()) {
            return Err(self.err(
                StoreOp::Check,
                StoreErrorKind::Transient,
                format!(
                    "the previous check of this {what} has not finished; the filesystem may be hung"
                ),
            ));
        }
        Ok(CheckRunning(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::JournalState;
    use crate::stores::testing::journal;

    fn dest(dir: &Path) -> FileDestination {
        FileDestination {
            store: "local".into(),
            directory: dir.to_path_buf(),
            file: "etl.json".into(),
            bare_token_file: Some("etl.token".into()),
            env_file: None,
        }
    }

    /// The env file follows the record like the bare file: written on
    /// promotion, restored by a rollback, and a record whose env file lags
    /// (a kill between the two writes) reads as not fully promoted, so the
    /// next pass finishes it.
    #[tokio::test]
    async fn the_env_file_holds_the_current_token_as_an_assignment() {
        let dir = tmpdir();
        let d = FileDestination {
            env_file: Some("etl.env".into()),
            ..dest(&dir)
        };
        let env = || std::fs::read_to_string(dir.join("etl.env")).unwrap();
        promoted(&d, "r1", "secret-one", None).await;
        assert_eq!(env(), "MOTHERDUCK_TOKEN=secret-one\n");
        let r2 = promoted(&d, "r2", "secret-two", Some("id-r1")).await;
        assert_eq!(env(), "MOTHERDUCK_TOKEN=secret-two\n");
        assert!(d.load().await.unwrap().current_settled());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("etl.env"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // As if killed after the record and bare file, before the env file.
        std::fs::write(dir.join("etl.env"), "MOTHERDUCK_TOKEN=secret-one\n").unwrap();
        let v = d.load().await.unwrap();
        assert!(v.current_partial && !v.current_settled());
        d.promote(&journal(&r2, JournalState::Promoted))
            .await
            .unwrap();
        assert_eq!(env(), "MOTHERDUCK_TOKEN=secret-two\n");

        d.rollback(&journal(&r2, JournalState::RolledBack))
            .await
            .unwrap();
        assert_eq!(env(), "MOTHERDUCK_TOKEN=secret-one\n");
        assert!(d.is_own_temp(&format!(".etl.env.tmp-{}", uuid::Uuid::new_v4().simple())));
    }

    #[tokio::test]
    async fn a_check_still_running_is_not_started_twice() {
        let (_dir, d) = store();
        d.check().await.unwrap();
        // As if a check cut off by the readiness deadline still hung.
        CHECKS_RUNNING.lock().unwrap().insert(d.path());
        let hung = CheckRunning(d.path());
        let e = d.check().await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Transient);
        assert!(e.to_string().contains("has not finished"), "{e}");
        drop(hung);
        d.check().await.unwrap();
    }

    /// A store directory (`<tmp>/mdr-file-<uuid>/store`, not created
    /// yet), removed with its parent when dropped.
    struct TempStore(PathBuf);

    impl std::ops::Deref for TempStore {
        type Target = Path;

        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TempStore {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            if let Some(parent) = self.0.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }

    /// A destination in a fresh [`TempStore`].
    fn store() -> (TempStore, FileDestination) {
        let dir = tmpdir();
        let d = dest(&dir);
        (dir, d)
    }

    fn tmpdir() -> TempStore {
        TempStore(
            std::env::temp_dir()
                .join(format!("mdr-file-{}", uuid::Uuid::new_v4().simple()))
                .join("store"),
        )
    }

    fn record(rid: &str, secret: &str, prev: Option<&str>) -> NewRecord {
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        crate::stores::testing::staged(rid, secret, prev, now, None)
    }

    /// Stages and promotes a record of rotation `rid`.
    async fn promoted(
        d: &FileDestination,
        rid: &str,
        secret: &str,
        prev: Option<&str>,
    ) -> NewRecord {
        let r = record(rid, secret, prev);
        d.stage(&r).await.unwrap();
        d.promote(&journal(&r, JournalState::Promoted))
            .await
            .unwrap();
        r
    }

    /// Promotes `r1` (`eyJone`), then `r2` (`eyJtwo`); returns `r2`.
    async fn two_rotations(d: &FileDestination) -> NewRecord {
        promoted(d, "r1", "eyJone", None).await;
        promoted(d, "r2", "eyJtwo", Some("id-r1")).await
    }

    fn read_token(d: &FileDestination) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path()).unwrap()).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    fn read_bare(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("etl.token")).unwrap()
    }

    #[tokio::test]
    async fn stage_promote_finish_and_repeat() {
        let (dir, d) = store();
        let r1 = record("r1", "eyJone", None);
        d.stage(&r1).await.unwrap();
        let v = d.load().await.unwrap();
        assert!(v.current.is_none(), "staged is not visible to consumers");
        assert_eq!(v.pending.unwrap().meta.rotation_id, "r1");

        let j = journal(&r1, JournalState::Promoted);
        d.promote(&j).await.unwrap();
        d.promote(&j).await.unwrap(); // repeat is harmless
        assert_eq!(read_token(&d), "eyJone");
        assert_eq!(read_bare(&dir), "eyJone\n");

        let r2 = promoted(&d, "r2", "eyJtwo", Some("id-r1")).await;
        let v = d.load().await.unwrap();
        assert_eq!(v.current.as_ref().unwrap().meta.rotation_id, "r2");
        assert_eq!(v.previous.as_ref().unwrap().meta.rotation_id, "r1");
        assert!(v.pending.is_none());
        let ids: Vec<&str> = v.token_ids().collect();
        assert_eq!(ids, vec!["id-r2", "id-r1"]);

        let done = journal(&r2, JournalState::Done);
        d.finish(&done).await.unwrap();
        d.finish(&done).await.unwrap();
        let v = d.load().await.unwrap();
        assert!(v.previous.is_none());
        assert_eq!(
            v.current.unwrap().journal.unwrap().state,
            JournalState::Done
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["etl.json", "etl.token"] {
                let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[tokio::test]
    async fn rollback_restores_previous_everywhere() {
        let (dir, d) = store();
        let r2 = two_rotations(&d).await;

        let rb = journal(&r2, JournalState::RolledBack);
        d.rollback(&rb).await.unwrap();
        d.rollback(&rb).await.unwrap();
        assert_eq!(read_token(&d), "eyJone");
        assert_eq!(read_bare(&dir), "eyJone\n");
        let v = d.load().await.unwrap();
        let cur = v.current.unwrap();
        assert_eq!(cur.meta.rotation_id, "r1");
        assert_eq!(cur.journal.unwrap(), rb, "the journal records the rollback");
        assert!(v.previous.is_none() && v.pending.is_none());
    }

    #[tokio::test]
    async fn rollback_before_promotion_drops_the_staged_record() {
        let (_dir, d) = store();
        promoted(&d, "r1", "eyJone", None).await;
        let r2 = record("r2", "eyJtwo", Some("id-r1"));
        d.stage(&r2).await.unwrap();
        d.rollback(&journal(&r2, JournalState::RolledBack))
            .await
            .unwrap();
        let v = d.load().await.unwrap();
        assert!(v.pending.is_none());
        assert_eq!(v.current.unwrap().meta.rotation_id, "r1");
        assert_eq!(read_token(&d), "eyJone");
    }

    /// Regression: a rollback interrupted after restoring the record but
    /// before rewriting the bare-token file was, when repeated, a no-op
    /// (the record already matched), so the bare file kept the new token,
    /// which the rollback then revokes.
    #[tokio::test]
    async fn regression_repeated_rollback_restores_the_bare_file() {
        let (dir, d) = store();
        let r2 = two_rotations(&d).await;
        // The first attempt restored the record, then stopped.
        let rb = journal(&r2, JournalState::RolledBack);
        let mut prev = d
            .read_record(StoreOp::Rollback, &d.sibling("previous"))
            .unwrap()
            .unwrap();
        prev.rotation = Some(rb.clone());
        d.write_atomic(StoreOp::Rollback, &d.path(), &prev.to_pretty_bytes())
            .unwrap();
        assert_eq!(read_bare(&dir), "eyJtwo\n");

        d.rollback(&rb).await.unwrap();
        assert_eq!(read_token(&d), "eyJone");
        assert_eq!(read_bare(&dir), "eyJone\n");
    }

    /// Regression: the lock file, records and bare file were opened
    /// following symbolic links. In a directory shared with the
    /// application, a link at `P.lock` made `try_lock` truncate whatever
    /// it pointed to.
    #[cfg(unix)]
    #[tokio::test]
    async fn symbolic_links_in_the_store_are_refused_not_followed() {
        let (dir, d) = store();
        promoted(&d, "r1", "eyJone", None).await;
        let victim = dir.parent().unwrap().join("victim.txt");
        std::fs::write(&victim, "precious\n").unwrap();

        std::os::unix::fs::symlink(&victim, dir.join("etl.json.lock")).unwrap();
        let e = d.try_lock("a").await.unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(e.kind, StoreErrorKind::Permanent);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");

        std::fs::rename(dir.join("etl.json"), dir.join("real.json")).unwrap();
        std::os::unix::fs::symlink(dir.join("real.json"), dir.join("etl.json")).unwrap();
        let e = d.load().await.unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[tokio::test]
    async fn lock_is_exclusive_until_dropped() {
        let dir = tmpdir();
        let a = dest(&dir);
        let b = dest(&dir);
        let lease = a.try_lock("a").await.unwrap();
        assert!(lease.is_some());
        assert!(b.try_lock("b").await.unwrap().is_none());
        drop(lease);
        assert!(b.try_lock("b").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn corrupt_record_and_open_directory_are_clear_errors() {
        let (dir, d) = store();
        std::fs::create_dir_all(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let e = d.check().await.unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Permanent);
            assert!(e.to_string().contains("owner-only"), "{e}");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::write(d.path(), r#"{"token": "eyJsecret", "token_id": 5}"#).unwrap();
        let e = d.load().await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Corrupt);
        assert!(e.to_string().contains("not a valid token record"), "{e}");
        assert!(!e.to_string().contains("eyJsecret"));
    }
}
