//! The `motherduck-rotator` binary: a thin entry over [`motherduck_rotator::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    motherduck_rotator::cli::main()
}
