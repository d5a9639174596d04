//! What of a data directory a backup leaves out: what `pg_basebackup` leaves out
//! (`basebackup.c`), for the same reasons, and pgward's own files. Pure rules on relative
//! paths, no I/O.

use crate::postgres::data_dir;

/// What to do with one entry of the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Back it up (a file), or walk into it (a directory).
    Include,
    /// A directory whose content is runtime state: recreate it empty at restore.
    KeepEmpty,
    /// Leave it out entirely.
    Skip,
}

/// Directories whose content is not needed (and not valid) in a restored cluster. `pg_wal`
/// comes back from the archive instead.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files at the top of the data directory that belong to the running server or to the
/// backup itself (the label and map are stored apart, as `pg_backup_stop` returned them).
/// pgward's own files are left out too ([`data_dir::TOP_FILES`]): a restored cluster starts
/// with no job history rather than a stale copy of the original's, taken while a run (perhaps
/// this backup) was going.
const TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "recovery.signal",
    "standby.signal",
];

/// The rule for `path` (relative to the data directory, `/`-separated).
pub fn rule(path: &str, is_dir: bool) -> Rule {
    let name = path.rsplit('/').next().unwrap_or(path);
    // Temporary files and directories of queries, anywhere (including tablespaces).
    if name.starts_with("pgsql_tmp") {
        return Rule::Skip;
    }
    if is_dir {
        if !path.contains('/') && EMPTY_DIRS.contains(&path) {
            return Rule::KeepEmpty;
        }
        return Rule::Include;
    }
    if !path.contains('/') && (TOP_FILES.contains(&path) || data_dir::TOP_FILES.contains(&path)) {
        return Rule::Skip;
    }
    // The relation cache init file is rebuilt at start.
    if name.starts_with("pg_internal.init") {
        return Rule::Skip;
    }
    Rule::Include
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_pg_basebackup() {
        let cases = [
            ("base", true, Rule::Include),
            ("base/1/1259", false, Rule::Include),
            ("global/pg_control", false, Rule::Include),
            ("postgresql.conf", false, Rule::Include),
            ("postgresql.auto.conf", false, Rule::Include),
            ("pg_wal", true, Rule::KeepEmpty),
            ("pg_replslot", true, Rule::KeepEmpty),
            ("pg_stat_tmp", true, Rule::KeepEmpty),
            ("base/pg_wal", true, Rule::Include),
            ("postmaster.pid", false, Rule::Skip),
            ("backup_label", false, Rule::Skip),
            ("base/1/backup_label", false, Rule::Include),
            ("base/1/pg_internal.init", false, Rule::Skip),
            ("global/pg_internal.init.123", false, Rule::Skip),
            ("base/pgsql_tmp", true, Rule::Skip),
            ("base/pgsql_tmp/pgsql_tmp123.0", false, Rule::Skip),
            (
                "pg_tblspc/16384/PG_15_202209061/pgsql_tmp",
                true,
                Rule::Skip,
            ),
            (
                "pg_tblspc/16384/PG_15_202209061/16385/16386",
                false,
                Rule::Include,
            ),
        ];
        for (path, is_dir, expected) in cases {
            assert_eq!(rule(path, is_dir), expected, "{path}");
        }
    }

    #[test]
    fn pgward_files_are_left_out() {
        let state = data_dir::JOBS_STATE_FILE;
        assert_eq!(rule(state, false), Rule::Skip);
        assert_eq!(rule(&format!("base/1/{state}"), false), Rule::Include);
        assert_eq!(rule(data_dir::INIT_INCOMPLETE_MARKER, false), Rule::Skip);
    }
}
