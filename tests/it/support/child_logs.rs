//! Output files of the child processes a test starts: each child writes
//! `<name>.out` and `<name>.err` in one directory, and a failing test shows
//! them all.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// The directory the children's output goes to.
pub struct ChildLogs {
    dir: PathBuf,
}

impl ChildLogs {
    pub fn new(dir: &Path) -> ChildLogs {
        ChildLogs {
            dir: dir.to_path_buf(),
        }
    }

    /// Points `cmd`'s stdout and stderr at `<name>.out` and `<name>.err`.
    pub fn attach(&self, cmd: &mut tokio::process::Command, name: &str) {
        let out = std::fs::File::create(self.dir.join(format!("{name}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.join(format!("{name}.err"))).unwrap();
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    }

    /// Waits for `child` (started with [`ChildLogs::attach`] as `name`),
    /// failing the test with every log if it takes longer than `patience`.
    pub async fn wait(
        &self,
        name: &str,
        child: &mut tokio::process::Child,
        patience: Duration,
    ) -> ExitStatus {
        match tokio::time::timeout(patience, child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!("`{name}` did not finish\n{}", self.all()),
        }
    }

    /// One file, e.g. `daemon.err`; empty if it does not exist.
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Every child's output, for failure messages.
    pub fn all(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".out") || n.ends_with(".err"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|n| format!("--- {n}\n{}", self.read(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A finished child's exit code and what it printed, for a failure message.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
