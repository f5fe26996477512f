//! The `signal` action: a signal to the process a pid file names, or to a
//! systemd unit's processes through `systemctl kill --signal=SIG UNIT`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ActionError, ReloadContext, verify_context};
use crate::verify::CommandHook;

/// The signals an action may send, by name.
const SIGNALS: &[(&str, libc::c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("TERM", libc::SIGTERM),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
    ("ALRM", libc::SIGALRM),
    ("CONT", libc::SIGCONT),
    ("KILL", libc::SIGKILL),
];

/// A pid file is a number and a newline; anything much longer is not one.
const PID_FILE_LIMIT: u64 = 64;

/// `HUP`, `SIGHUP` or `hup` to the signal's short name and number.
///
/// # Errors
/// A name not in the supported set, quoted.
pub fn parse_signal(name: &str) -> Result<(&'static str, libc::c_int), String> {
    let upper = name.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == short)
        .map(|&(n, s)| (n, s))
        .ok_or_else(|| {
            let names: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
            format!("`{name}` is not one of {}", names.join(", "))
        })
}

/// Where the signal goes.
#[derive(Debug, Clone)]
pub enum SignalTarget {
    /// The process whose pid the file holds, read at each run.
    PidFile(PathBuf),
    /// A systemd unit's processes, through `systemctl`.
    SystemdUnit {
        unit: String,
        /// `systemctl kill --signal=SIG UNIT`, run like a command action.
        systemctl: CommandHook,
    },
}

/// A validated signal action.
#[derive(Debug, Clone)]
pub struct SignalAction {
    name: &'static str,
    signal: libc::c_int,
    target: SignalTarget,
}

impl SignalAction {
    /// A signal (see [`parse_signal`]) to the process `pid_file` names.
    ///
    /// # Errors
    /// An unknown signal; a relative pid file path.
    pub fn pid_file(signal: &str, pid_file: PathBuf) -> Result<SignalAction, String> {
        let (name, signal) = parse_signal(signal).map_err(|e| format!("signal {e}"))?;
        if !pid_file.is_absolute() {
            return Err(format!(
                "pid_file `{}` must be an absolute path",
                pid_file.display()
            ));
        }
        Ok(SignalAction {
            name,
            signal,
            target: SignalTarget::PidFile(pid_file),
        })
    }

    /// A signal to systemd unit `unit`, sent by `systemctl` (a program
    /// looked up in `PATH` unless absolute) within `timeout`.
    ///
    /// # Errors
    /// An unknown signal; a unit name that is empty, starts with `-` or
    /// holds characters systemd does not allow.
    pub fn systemd_unit(
        signal: &str,
        unit: &str,
        systemctl: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Result<SignalAction, String> {
        let (name, signal) = parse_signal(signal).map_err(|e| format!("signal {e}"))?;
        let allowed = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
        if unit.is_empty()
            || unit.len() > 255
            || unit.starts_with('-')
            || !unit.chars().all(allowed)
        {
            return Err(format!("systemd_unit `{unit}` is not a valid unit name"));
        }
        let systemctl = CommandHook::builder(systemctl)
            .args([
                "kill".to_owned(),
                format!("--signal=SIG{name}"),
                unit.to_owned(),
            ])
            .timeout(timeout)
            .deadline(timeout)
            .interval(timeout)
            .build()?;
        Ok(SignalAction {
            name,
            signal,
            target: SignalTarget::SystemdUnit {
                unit: unit.to_owned(),
                systemctl,
            },
        })
    }

    pub fn signal_name(&self) -> &'static str {
        self.name
    }

    pub fn target(&self) -> &SignalTarget {
        &self.target
    }

    pub(super) fn label(&self) -> String {
        match &self.target {
            SignalTarget::PidFile(p) => format!("SIG{} to pid file {}", self.name, p.display()),
            SignalTarget::SystemdUnit { unit, .. } => {
                format!("SIG{} to systemd unit {unit}", self.name)
            }
        }
    }

    pub(super) async fn run(
        &self,
        ctx: &ReloadContext,
        scrub_env: &[String],
    ) -> Result<(), ActionError> {
        match &self.target {
            SignalTarget::PidFile(path) => {
                let pid = read_pid(path).await?;
                send(pid, self.signal).map_err(|e| {
                    ActionError::new(
                        "signal",
                        format!(
                            "cannot send SIG{} to pid {pid} (from `{}`): {e}",
                            self.name,
                            path.display()
                        ),
                    )
                })
            }
            SignalTarget::SystemdUnit { systemctl, .. } => systemctl
                .attempt_with(&verify_context(ctx), scrub_env, &[])
                .await
                .map_err(|r| {
                    ActionError::new(
                        r.code(),
                        format!("`{}` {r}", super::command::label(systemctl)),
                    )
                }),
        }
    }
}

/// The pid in a pid file: a positive number above 1 (0, 1 and negative
/// numbers would address process groups or every process).
async fn read_pid(path: &Path) -> Result<libc::pid_t, ActionError> {
    use tokio::io::AsyncReadExt;
    let bad = |why: String| ActionError::new("pid_file", why);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| bad(format!("cannot read pid file `{}`: {e}", path.display())))?;
    let mut text = String::new();
    file.take(PID_FILE_LIMIT)
        .read_to_string(&mut text)
        .await
        .map_err(|e| bad(format!("cannot read pid file `{}`: {e}", path.display())))?;
    let trimmed = text.trim();
    match trimmed.parse::<libc::pid_t>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(bad(format!(
            "pid file `{}` does not hold a process id (it holds `{}`)",
            path.display(),
            trimmed.chars().take(20).collect::<String>()
        ))),
    }
}

fn send(pid: libc::pid_t, signal: libc::c_int) -> Result<(), std::io::Error> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // `pid` is above 1, so it names one process, never a group.
    let r = unsafe { libc::kill(pid, signal) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_with_or_without_sig_and_in_any_case() {
        assert_eq!(parse_signal("HUP"), Ok(("HUP", libc::SIGHUP)));
        assert_eq!(parse_signal("sigusr1"), Ok(("USR1", libc::SIGUSR1)));
        assert_eq!(
            parse_signal("SEGV").unwrap_err(),
            "`SEGV` is not one of HUP, INT, QUIT, TERM, USR1, USR2, WINCH, ALRM, CONT, KILL"
        );
    }

    #[test]
    fn unit_names_are_checked() {
        let t = Duration::from_secs(5);
        assert!(SignalAction::systemd_unit("HUP", "app.service", "systemctl", t).is_ok());
        assert!(SignalAction::systemd_unit("HUP", "app@1.service", "systemctl", t).is_ok());
        for bad in ["", "--all", "app service", "app;rm"] {
            assert!(
                SignalAction::systemd_unit("HUP", bad, "systemctl", t).is_err(),
                "{bad}"
            );
        }
        assert!(SignalAction::pid_file("HUP", "run/app.pid".into()).is_err());
    }

    #[tokio::test]
    async fn a_systemd_unit_is_signalled_through_systemctl_kill() {
        let dir = std::env::temp_dir().join(format!("mdr-systemctl-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("argv");
        let fake = dir.join("systemctl");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" > {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let a =
            SignalAction::systemd_unit("usr1", "app@blue.service", &fake, Duration::from_secs(5))
                .unwrap();
        let ctx = ReloadContext {
            policy: "p".into(),
            rotation_id: "r".into(),
            service_account: "svc".into(),
            token_id: "t".into(),
            token: None,
            cause: super::super::ReloadCause::Promoted,
            now: chrono::Utc::now(),
        };
        a.run(&ctx, &[]).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "kill --signal=SIGUSR1 app@blue.service\n"
        );
        std::fs::write(&fake, "#!/bin/sh\nexit 5\n").unwrap();
        let e = a.run(&ctx, &[]).await.unwrap_err();
        assert!(
            e.message.ends_with("` exited with status 5"),
            "{}",
            e.message
        );
        assert_eq!(e.reason, "exit");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_bad_pid_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("mdr-pid-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for (content, want) in [
            ("1\n", "does not hold a process id (it holds `1`)"),
            ("-5", "does not hold a process id"),
            ("abc", "does not hold a process id (it holds `abc`)"),
        ] {
            let p = dir.join("app.pid");
            std::fs::write(&p, content).unwrap();
            let e = read_pid(&p).await.unwrap_err();
            assert!(e.message.contains(want), "{content}: {}", e.message);
            assert_eq!(e.reason, "pid_file");
        }
        let e = read_pid(&dir.join("missing.pid")).await.unwrap_err();
        assert!(
            e.message.starts_with("cannot read pid file `"),
            "{}",
            e.message
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
