//! Where a policy writes: its destinations and lock place on the named
//! stores, and the claims that keep two destinations (of any policies)
//! from writing the same record or one of its siblings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use super::span::FieldPath;
use super::stores::{AWS_SUFFIXES, StoreDef, VAULT_SUFFIXES, aws_name_problem, vault_path_problem};
use super::validator::{Validator, plain_file_name};
use crate::stores::Destination;
use crate::stores::aws::AwsDestination;
use crate::stores::file::FileDestination;
use crate::stores::vault::{KvVersion, VaultDestination};

impl Validator<'_> {
    /// Records what a destination of `policy` writes (its record, the
    /// siblings its store keeps next to it, a bare token file), reporting
    /// anything another destination (of any policy, this one included)
    /// already writes. Two records at one place would overwrite each other,
    /// and so would a record named like another record's sibling: the file
    /// store keeps `P.pending`, `P.previous` and `P.lock` next to a record
    /// `P`, the Vault store `P.pending` and `P.lock` (KV v2) or
    /// `P.previous` (KV v1), the AWS store `N.journal` and `N.lock`. With
    /// `lock_only`, `t` is a policy's separate lock place, where only the
    /// lock is written.
    pub(super) fn claim(
        &mut self,
        claims: &mut BTreeMap<Place, Claim>,
        policy: &str,
        t: &Target,
        lock_only: bool,
        dpath: &FieldPath,
    ) {
        let kind = t.kind;
        let wanted = if lock_only {
            vec![("path", t.lock.clone(), Some(t.record.clone()))]
        } else {
            t.writes.clone()
        };
        let mut reported = BTreeSet::new();
        for (field, place, sibling_of) in wanted {
            let new = Claim {
                policy: policy.to_owned(),
                kind,
                sibling_of,
                lock_only,
            };
            let Some(c) = claims.get(&place) else {
                claims.insert(place, new);
                continue;
            };
            let theirs = c.role();
            let reason = match (&new.sibling_of, lock_only) {
                (None, _) => format!("`{place}` is already {theirs}"),
                (Some(_), true) => {
                    format!("the lock would be kept at `{place}`, which is already {theirs}")
                }
                (Some(_), false) => match (&c.sibling_of, c.lock_only) {
                    (None, _) => format!(
                        "the {kind} store keeps `{place}` next to this record, but policy `{}` already writes that {}",
                        c.policy,
                        c.noun()
                    ),
                    (Some(_), true) => format!(
                        "the {kind} store keeps `{place}` next to this record, but policy `{}` already keeps its lock there",
                        c.policy
                    ),
                    // Equal records, reported for the record itself.
                    (Some(_), false) => continue,
                },
            };
            if reported.insert(field) {
                self.error(&dpath.key(field), reason);
            }
        }
    }

    /// A destination (or, without `bare_token_file`, a lock place) on the
    /// store named `store`, and what it writes. On a store whose settings
    /// have errors, `path` is checked for form only and `None` returned.
    pub(super) fn destination(
        &mut self,
        store: &str,
        place: &str,
        bare_token_file: Option<&str>,
        dpath: &FieldPath,
        stores: &BTreeMap<String, StoreDef>,
    ) -> Option<(Destination, Target)> {
        let Some(def) = stores.get(store) else {
            let known: Vec<&str> = stores.keys().map(String::as_str).collect();
            self.error(
                &dpath.key("store"),
                format!(
                    "no store named `{store}` (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            return None;
        };
        let before = self.errors.len();
        let kind = def.kind()?;
        let ppath = dpath.key("path");
        match kind {
            "file" => {
                if !plain_file_name(place) {
                    self.error(
                        &ppath,
                        format!(
                            "`{}` must be a plain file name inside the store's directory",
                            place.escape_debug()
                        ),
                    );
                }
                if let Some(b) = bare_token_file
                    && (!plain_file_name(b) || b == place)
                {
                    self.error(
                        &dpath.key("bare_token_file"),
                        format!(
                            "`{}` must be a plain file name, different from `path`",
                            b.escape_debug()
                        ),
                    );
                }
            }
            "vault" => self.store_place(
                &ppath,
                "Vault KV path",
                place,
                vault_path_problem(place),
                &VAULT_SUFFIXES,
                "the Vault store keeps `<path>.pending`, `<path>.lock` (KV v2) and `<path>.previous` (KV v1) next to each destination",
            ),
            _ => self.store_place(
                &ppath,
                "secret name",
                place,
                aws_name_problem(place),
                &AWS_SUFFIXES,
                "the AWS store keeps `<name>.journal` and `<name>.lock` next to each destination",
            ),
        }
        if kind != "file" && bare_token_file.is_some() {
            self.error(
                &dpath.key("bare_token_file"),
                format!("applies to file stores only, and store `{store}` is of type `{kind}`"),
            );
        }
        if self.errors.len() > before {
            return None;
        }
        match def {
            StoreDef::File { directory } => {
                let dest = FileDestination {
                    store: store.to_owned(),
                    directory: directory.clone(),
                    file: place.to_owned(),
                    bare_token_file: bare_token_file.map(str::to_owned),
                    env_file: None,
                };
                let mut target = Target::new(
                    "file",
                    Place::File(dest.path()),
                    &[".pending", ".previous", ".lock"],
                );
                if let Some(b) = bare_token_file {
                    target
                        .writes
                        .push(("bare_token_file", Place::File(directory.join(b)), None));
                }
                Some((Destination::File(dest), target))
            }
            StoreDef::Vault(v) => {
                let dest = match VaultDestination::new(v.conn.clone(), store, &v.mount, place, v.kv)
                {
                    Ok(d) => d.with_lease_ttl(v.lease_ttl),
                    Err(e) => {
                        self.error(&ppath, e.to_string());
                        return None;
                    }
                };
                let suffixes: &[&str] = match v.kv {
                    KvVersion::V2 => &[".pending", ".lock"],
                    KvVersion::V1 => &[".pending", ".previous"],
                };
                let record = Place::Vault {
                    server: v.server.clone(),
                    mount: v.mount.clone(),
                    path: place.to_owned(),
                };
                Some((
                    Destination::Vault(dest),
                    Target::new("vault", record, suffixes),
                ))
            }
            StoreDef::Aws(a) => {
                let dest = AwsDestination::new(store, a.conn.clone(), place).and_then(|d| {
                    d.create_if_missing(a.create_if_missing, a.kms_key_id.clone())
                        .with_version_budget(a.version_budget)
                        .with_lock_ttl(a.lock_ttl)
                });
                let dest = match dest {
                    Ok(d) => d,
                    Err(e) => {
                        self.error(&ppath, e.to_string());
                        return None;
                    }
                };
                let record = Place::Aws {
                    region: a.conn.region().to_owned(),
                    name: place.to_owned(),
                };
                Some((
                    Destination::Aws(dest),
                    Target::new("aws", record, &AWS_SUFFIXES),
                ))
            }
            StoreDef::Invalid { .. } => None,
        }
    }

    /// Reports the place of a Vault or AWS destination when it is malformed
    /// (`problem`) or ends with a suffix the store keeps next to it.
    fn store_place(
        &mut self,
        path: &FieldPath,
        what: &str,
        place: &str,
        problem: Option<String>,
        suffixes: &[&str],
        kept: &str,
    ) {
        let problem = problem.or_else(|| {
            suffixes
                .iter()
                .find(|s| place.ends_with(*s))
                .map(|s| format!("must not end with `{s}`: {kept}"))
        });
        if let Some(why) = problem {
            self.error(path, format!("{what} `{}` {why}", place.escape_debug()));
        }
    }
}

/// A place a destination writes: a file, a Vault secret or an AWS secret.
/// Equal places are the same object in the same system.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Place {
    File(PathBuf),
    /// A secret in a KV mount; `server` is the address and namespace.
    Vault {
        server: String,
        mount: String,
        path: String,
    },
    /// A secret of the account in `region` (one credential chain per
    /// daemon, so one account).
    Aws {
        region: String,
        name: String,
    },
}

impl Place {
    /// The place `suffix` appended to this one names.
    fn with_suffix(&self, suffix: &str) -> Place {
        match self {
            Place::File(p) => {
                let mut name = p.clone().into_os_string();
                name.push(suffix);
                Place::File(PathBuf::from(name))
            }
            Place::Vault {
                server,
                mount,
                path,
            } => Place::Vault {
                server: server.clone(),
                mount: mount.clone(),
                path: format!("{path}{suffix}"),
            },
            Place::Aws { region, name } => Place::Aws {
                region: region.clone(),
                name: format!("{name}{suffix}"),
            },
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File(p) => write!(f, "{}", p.display()),
            Place::Vault { mount, path, .. } => write!(f, "vault:{mount}/{path}"),
            Place::Aws { region, name } => write!(f, "aws:{region}/{name}"),
        }
    }
}

/// Everything one destination writes, for finding two destinations that
/// would write the same place.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The store kind, for messages.
    pub(super) kind: &'static str,
    /// The record consumers read.
    pub(super) record: Place,
    /// The record, the siblings its store keeps next to it and a bare token
    /// file: each with the field a conflict is reported at and, for a
    /// sibling, the record it belongs to.
    pub(super) writes: Vec<(&'static str, Place, Option<Place>)>,
    /// The sibling a lock on this destination is kept in.
    pub(super) lock: Place,
}

impl Target {
    /// A record at `record` with the siblings `suffixes` next to it and the
    /// lock at `<record>.lock`.
    fn new(kind: &'static str, record: Place, suffixes: &[&str]) -> Target {
        let mut writes = vec![("path", record.clone(), None)];
        for suffix in suffixes {
            writes.push(("path", record.with_suffix(suffix), Some(record.clone())));
        }
        Target {
            kind,
            lock: record.with_suffix(".lock"),
            record,
            writes,
        }
    }
}

/// Who writes a place, for reporting two destinations that would write the
/// same one.
pub(super) struct Claim {
    policy: String,
    kind: &'static str,
    /// The record this is a sibling of (`.pending`, `.lock`, …), or `None`
    /// for a record or bare-token file itself.
    sibling_of: Option<Place>,
    /// Claimed by a policy's separate lock place.
    lock_only: bool,
}

impl Claim {
    /// What the place is to its claimant, for messages: "written by policy
    /// `a`", "used by policy `a` as a working file of its record `x`", ….
    fn role(&self) -> String {
        let policy = &self.policy;
        match (&self.sibling_of, self.lock_only) {
            (None, _) => format!("written by policy `{policy}`"),
            (Some(_), true) => format!("used by policy `{policy}` for its lock"),
            (Some(record), false) => format!(
                "used by policy `{policy}` as a {} of its record `{record}`",
                match self.kind {
                    "file" => "working file",
                    "vault" => "sibling secret",
                    _ => "companion secret",
                }
            ),
        }
    }

    /// What the store writes: a file or a secret.
    fn noun(&self) -> &'static str {
        if self.kind == "file" {
            "file"
        } else {
            "secret"
        }
    }
}
