//! Which PostgreSQL major the data-path tests run on.
//!
//! By default the server is Debian's (the newest `/usr/lib/postgresql/<major>/bin`, 15 here).
//! `PGWARD_TEST_PG_MAJOR=<major>` runs the clusters of the tests on another major's server
//! binaries, `.tools/postgresql/<major>/bin` (installed by `scripts/pg-majors.sh`): every
//! config written by [`Cluster::config`](super::Cluster::config) names them in
//! `postgres.bin_dir`. The client tools the tests run (psql, pgbench, pg_controldata...) stay
//! Debian's: they talk to every major.

use std::path::PathBuf;

use super::{pg_bin_dir, repo_root};

/// The variable naming the major under test.
pub const MAJOR_VAR: &str = "PGWARD_TEST_PG_MAJOR";

/// The major the tests asked for, when it is not the default server's.
pub fn other_major() -> Option<u32> {
    let text = std::env::var(MAJOR_VAR).ok().filter(|v| !v.is_empty())?;
    let major: u32 = text
        .parse()
        .unwrap_or_else(|_| panic!("{MAJOR_VAR}={text:?} is not a major version number"));
    (major != debian_major()).then_some(major)
}

/// The default server's major: the number of its `/usr/lib/postgresql/<major>` directory.
pub fn debian_major() -> u32 {
    let bin = pg_bin_dir();
    bin.parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no major version in {}", bin.display()))
}

/// The major the tests' servers run.
pub fn server_major() -> u32 {
    other_major().unwrap_or_else(debian_major)
}

/// `postgres.bin_dir` for the tests' configs: the other major's binaries, or none (pgward
/// then finds Debian's itself).
pub fn server_bin_dir() -> Option<PathBuf> {
    let major = other_major()?;
    let bin = repo_root().join(format!(".tools/postgresql/{major}/bin"));
    assert!(
        bin.join("postgres").is_file(),
        "{MAJOR_VAR}={major}: no server in {} (scripts/pg-majors.sh installs it)",
        bin.display()
    );
    Some(bin)
}

/// Fails a test run on another major whose pgward started a server of a different one (a
/// config that did not come from [`Cluster::config`](super::Cluster::config)): its result
/// would say nothing about the major under test.
pub fn check_started_major(command: &str, output: &str) {
    let Some(major) = other_major() else {
        return;
    };
    let marker = "starting PostgreSQL ";
    for line in output.lines() {
        let Some(at) = line.find(marker) else {
            continue;
        };
        let started: String = line[at + marker.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        assert_eq!(
            started,
            major.to_string(),
            "`{command}` started PostgreSQL {started}, not {major} ({MAJOR_VAR}): its config \
             does not name the major's bin dir\n{line}"
        );
    }
}
