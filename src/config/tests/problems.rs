//! One test per class of problem, each with its exact `file:line:column: key: reason`.

use super::*;

#[test]
fn type_error_in_a_number() {
    assert_eq!(
        problem("postgres:\n  port: abc\n"),
        "cfg.yaml:2:9: postgres.port: invalid port \"abc\" (use an integer from 1 to 65535)"
    );
}

#[test]
fn type_error_in_the_shape() {
    assert_eq!(
        problem("services:\n  - name: pgbouncer\n    command: pgbouncer\n"),
        "cfg.yaml:3:14: services[0].command: expected a list, found a string"
    );
    assert_eq!(
        problem("postgres: [1]\n"),
        "cfg.yaml:1:11: postgres: expected a mapping of settings, found a list"
    );
}

/// A value of the wrong kind is named in YAML's terms, with what the key takes: never a Rust
/// type's name (serde's own wording is `invalid type: integer `5`, expected struct ...`).
#[test]
fn wrong_shapes_are_worded_in_the_file_s_terms() {
    let cases = [
        (
            "postgres: 5\n",
            "cfg.yaml:1:11: postgres: expected a mapping of settings, found an integer",
        ),
        (
            "jobs: {}\n",
            "cfg.yaml:1:7: jobs: expected a list, found a mapping",
        ),
        (
            "storage: [1]\n",
            "cfg.yaml:1:10: storage: expected a mapping of settings, found a list",
        ),
        (
            "log: text\n",
            "cfg.yaml:1:6: log: expected a mapping of settings, found a string",
        ),
        (
            "storage:\n  s3: true\n",
            "cfg.yaml:2:7: storage.s3: expected a mapping of settings, found a boolean",
        ),
        (
            "services: [5]\n",
            "cfg.yaml:1:12: services[0]: expected a mapping of settings, found an integer",
        ),
        (
            "jobs:\n  - name: a\n    options: 1.5\n",
            "cfg.yaml:3:14: jobs[0].options: expected a mapping of settings, found a number",
        ),
        (
            "postgres:\n  port: [1]\n",
            "cfg.yaml:2:9: postgres.port: expected a single value, found a list",
        ),
        (
            "postgres:\n  parameters: [1]\n",
            "cfg.yaml:2:15: postgres.parameters: expected a mapping, found a list",
        ),
        (
            "services:\n  - name: a\n    command: [a]\n    after: {x: 1}\n",
            "cfg.yaml:4:12: services[0].after: expected a name or a list of names, found a \
             mapping",
        ),
        (
            "jobs:\n  - name: a\n    command: {a: 1}\n",
            "cfg.yaml:3:14: jobs[0].command: expected a list of arguments or a shell command \
             line, found a mapping",
        ),
        (
            "postgres: !settings 5\n",
            "cfg.yaml:1:11: postgres: expected a mapping of settings, found an integer",
        ),
        (
            "services: [~]\n",
            "cfg.yaml:1:12: services[0]: expected a mapping of settings, found null",
        ),
        (
            "- 1\n",
            "cfg.yaml:1:1: <document>: expected a mapping of settings, found a list",
        ),
        (
            "hello\n",
            "cfg.yaml:1:1: <document>: expected a mapping of settings, found a string",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(problem(yaml), want, "{yaml}");
    }
}

#[test]
fn unknown_key_at_the_top() {
    assert!(problem("postgers:\n  port: 1\n")
        .starts_with("cfg.yaml:1:1: postgers: unknown field `postgers`, expected one of "));
}

#[test]
fn unknown_key_in_a_nested_map() {
    assert_eq!(
        problem("postgres:\n  stop:\n    mdoe: fast\n"),
        "cfg.yaml:3:5: postgres.stop.mdoe: unknown field `mdoe`, expected one of `mode`, \
         `timeout`, `kill_timeout`"
    );
}

#[test]
fn unknown_key_in_a_list_item() {
    let yaml = "services:\n  - name: a\n    command: [a]\n  - name: b\n    comand: [b]\n";
    assert!(problem(yaml)
        .starts_with("cfg.yaml:5:5: services[1].comand: unknown field `comand`, expected one of"));
}

#[test]
fn yaml_syntax_error() {
    assert_eq!(
        problem("postgres:\n  port: 1\n port: 2\n"),
        "cfg.yaml:3:2: <document>: did not find expected key, while parsing a block mapping"
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        problem("postgres:\n  stop:\n    timeout: 5 parsecs\n"),
        "cfg.yaml:3:14: postgres.stop.timeout: invalid duration \"5 parsecs\": unknown time \
         unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, \
         years (and few variations)"
    );
}

#[test]
fn bad_size() {
    assert_eq!(
        problem("log:\n  max_line_bytes: 12 zettabytes\n"),
        "cfg.yaml:2:19: log.max_line_bytes: invalid size \"12 zettabytes\": unknown unit \
         \"zettabytes\" (use B, kB, MB, GB, TB or KiB, MiB, GiB, TiB; all 1024-based)"
    );
}

#[test]
fn bad_cron() {
    let yaml = "jobs:\n  - name: n\n    schedule: \"0 0 1 * * * *\"\n    action: backup\n";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:3:15: jobs[0].schedule: invalid cron schedule \"0 0 1 * * * *\": expected 5 \
         fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found 7"
    );
    let yaml = "jobs:\n  - name: n\n    schedule: 0 25 * * *\n    action: backup\n";
    assert!(problem(yaml)
        .starts_with("cfg.yaml:3:15: jobs[0].schedule: invalid cron schedule \"0 25 * * *\": "));
}

#[test]
fn missing_env_var() {
    assert_eq!(
        problem("postgres:\n  init:\n    password: ${PGPASS}\n"),
        "cfg.yaml:3:15: postgres.init.password: environment variable PGPASS is not set and has \
         no default (use ${PGPASS:-default})"
    );
}

#[test]
fn duplicate_job_names() {
    let yaml = "\
jobs:
  - { name: nightly, schedule: '@daily', action: backup }
  - { name: nightly, schedule: '@daily', action: expire }
";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:3:13: jobs[1].name: duplicate job name \"nightly\" (first defined at line 2)"
    );
}

#[test]
fn duplicate_service_names() {
    let yaml = "\
services:
  - name: a
    command: [a]
  - name: a
    command: [b]
";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:4:11: services[1].name: duplicate service name \"a\" (first defined at line 2)"
    );
}

#[test]
fn service_named_postgres() {
    assert_eq!(
        problem("services:\n  - name: postgres\n    command: [x]\n"),
        "cfg.yaml:2:11: services[0].name: \"postgres\" is reserved for the supervised server; \
         pick another name"
    );
}

#[test]
fn after_unknown_service() {
    let yaml = "services:\n  - name: a\n    command: [a]\n    after: [postgres, nope]\n";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:4:23: services[0].after[1]: unknown service \"nope\" (known: postgres, a)"
    );
}

#[test]
fn after_cycle() {
    let yaml = "\
services:
  - { name: a, command: [a], after: b }
  - { name: b, command: [b], after: [c] }
  - { name: c, command: [c], after: [postgres, a] }
  - { name: d, command: [d], after: d }
";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:4:48: services[2].after[1]: dependency cycle: a -> b -> c -> a",
            "cfg.yaml:5:37: services[3].after[0]: dependency cycle: d -> d",
        ]
    );
}

#[test]
fn empty_command() {
    assert_eq!(
        problem("services:\n  - name: a\n    command: []\n"),
        "cfg.yaml:3:14: services[0].command: command must not be empty"
    );
    assert_eq!(
        problem("services:\n  - name: a\n"),
        "cfg.yaml:2:5: services[0].command: missing command"
    );
}

#[test]
fn job_and_service_users_must_exist() {
    let yaml = "\
services:
  - { name: a, command: [a], user: ghost }
  - { name: b, command: [b], user: pgbouncer }
jobs:
  - { name: j, schedule: '@daily', command: [x], user: phantom }
  - { name: k, schedule: '@daily', command: [x], user: root }
  - { name: l, schedule: '@daily', command: [x] }
";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:2:36: services[0].user: no such user \"ghost\"",
            "cfg.yaml:5:56: jobs[0].user: no such user \"phantom\"",
        ]
    );
}

#[test]
fn system_users_are_looked_up_in_the_user_database() {
    assert_eq!(system_user("root"), Ok(()));
    assert_eq!(system_user("0"), Ok(()));
    assert_eq!(
        system_user("pgward-no-such-user"),
        Err("no such user \"pgward-no-such-user\"".to_owned())
    );
}

#[test]
fn inherit_env_takes_variable_names() {
    let yaml = "\
services:
  - { name: a, command: [a], inherit_env: [OK, \"A=B\", \"\"] }
";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:2:48: services[0].inherit_env[1]: \"A=B\" is not an environment \
             variable name (no `=`, not empty)",
            "cfg.yaml:2:55: services[0].inherit_env[2]: \"\" is not an environment variable \
             name (no `=`, not empty)",
        ]
    );
    assert_eq!(
        problem("jobs:\n  - { name: j, schedule: '@daily', command: [x], inherit_env: BAD }\n"),
        "cfg.yaml:2:63: jobs[0].inherit_env: expected a list, found a string"
    );
}

#[test]
fn job_with_both_action_and_command() {
    let yaml = "jobs:\n  - name: j\n    schedule: '@daily'\n    action: backup\n    command: [x]\n";
    assert_eq!(
        problem(yaml),
        "cfg.yaml:5:5: jobs[0].command: action and command are exclusive; set one"
    );
}

#[test]
fn job_with_neither_action_nor_command() {
    assert_eq!(
        problem("jobs:\n  - name: j\n    schedule: '@daily'\n"),
        "cfg.yaml:2:5: jobs[0]: either action or command is required"
    );
}

#[test]
fn unknown_action() {
    assert_eq!(
        problem("jobs:\n  - { name: j, schedule: '@daily', action: vacuum }\n"),
        "cfg.yaml:2:44: jobs[0].action: unknown action \"vacuum\" (use backup, expire, verify, \
         check, sql, restore-test)"
    );
}

#[test]
fn bad_stop_signal() {
    assert_eq!(
        problem("services:\n  - { name: a, command: [a], stop_signal: TERMINATE }\n"),
        "cfg.yaml:2:43: services[0].stop_signal: unknown stop signal \"TERMINATE\" (use TERM, \
         INT, QUIT, HUP, KILL, USR1 or USR2)"
    );
}

#[test]
fn bad_timezone() {
    let line = problem(
        "jobs:\n  - { name: j, schedule: '@daily', action: check, timezone: Mars/Olympus }\n",
    );
    assert_eq!(
        line,
        "cfg.yaml:2:61: jobs[0].timezone: unknown time zone \"Mars/Olympus\" (use UTC or an \
         IANA name of the tz database such as Europe/Paris or America/New_York; case matters)"
    );
}

#[test]
fn seconds_reboot_and_any_iana_zone_are_accepted() {
    let config = ok(
        "\
jobs:
  - { name: fast, schedule: '*/10 * * * * *', command: [true] }
  - { name: boot, schedule: '@reboot', action: check }
  - { name: ny, schedule: '30 2 * * *', action: check, timezone: America/New_York }
",
        &[],
    );
    let got: Vec<(&str, &str)> = config
        .jobs
        .iter()
        .map(|j| (j.schedule.as_str(), j.timezone.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("*/10 * * * * *", "UTC"),
            ("@reboot", "UTC"),
            ("30 2 * * *", "America/New_York")
        ]
    );
}

#[test]
fn bad_stop_mode_log_format_and_port_zero_all_reported() {
    let yaml = "\
postgres:
  port: 0
  stop: { mode: slow }
log:
  format: xml
";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:2:9: postgres.port: port 0 is not allowed (use 1 to 65535)",
            "cfg.yaml:3:17: postgres.stop.mode: invalid stop mode \"slow\" (use smart or fast)",
            "cfg.yaml:5:11: log.format: invalid log format \"xml\" (use text or json)",
        ]
    );
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let yaml = "\
postgres:
  data_dir: relative/dir
  restart: { backoff: 1 }
services:
  - name: 'bad name'
    command: ['']
    restart: sometimes
jobs:
  - { name: j, schedule: '@daily', action: backup, timeout: soon }
";
    assert_eq!(
        problems(yaml, &[]),
        [
            "cfg.yaml:2:13: postgres.data_dir: expected an absolute path, got \"relative/dir\"",
            "cfg.yaml:3:23: postgres.restart.backoff: invalid duration \"1\": time unit needed, \
             for example 1sec or 1ms",
            "cfg.yaml:5:11: services[0].name: invalid service name \"bad name\" (use letters, \
             digits, '_', '.' and '-', starting with a letter or digit)",
            "cfg.yaml:6:15: services[0].command[0]: program name must not be empty",
            "cfg.yaml:7:14: services[0].restart: invalid restart mode \"sometimes\" (use always, \
             on-failure or never)",
            "cfg.yaml:9:61: jobs[0].timeout: invalid duration \"soon\": expected number at 0",
        ]
    );
}

/// A restored copy never writes to the repository it came from; a successor may.
#[test]
fn a_copy_may_not_write_to_the_repository_it_came_from() {
    let copy = "postgres:\n  init:\n    from_backup: latest\njobs:\n  - name: nightly\n    \
                schedule: \"0 1 * * *\"\n    action: backup\n  - name: off\n    schedule: \
                \"@daily\"\n    action: expire\n    enabled: false\n";
    assert_eq!(
        problem(copy),
        "cfg.yaml:3:5: postgres.init.from_backup: a cluster restored with from_backup is a copy \
         (postgres.init.restore_as: copy, the default) and must never write to the repository \
         it came from, but wal.archive: true and jobs[0] (\"nightly\", action: backup) would \
         write into storage.url\n\
         HINT: for a copy, set wal.archive: false and remove (or disable) the backup and expire \
         jobs (once it runs, it may archive elsewhere: drop from_backup and point storage.url \
         at its own repository); if this cluster replaces the original (disaster recovery), \
         set postgres.init.restore_as: successor"
    );
    let successor = copy.replace("latest\n", "latest\n    restore_as: successor\n");
    assert_eq!(
        ok(&successor, &[]).postgres.init.restore_as,
        RestoreAs::Successor
    );
    let reader = "postgres:\n  init:\n    from_backup: latest\nwal:\n  archive: false\n";
    assert_eq!(ok(reader, &[]).postgres.init.restore_as, RestoreAs::Copy);
    assert_eq!(
        problem("postgres:\n  init:\n    restore_as: clone\n"),
        "cfg.yaml:3:17: postgres.init.restore_as: invalid restore_as \"clone\" (use copy or \
         successor)"
    );
}

/// A standby is made from the repository, streams from a primary named without a password,
/// and through a slot with a valid name.
#[test]
fn a_standby_needs_from_backup_a_conninfo_without_a_password_and_a_valid_slot() {
    let good = "postgres:\n  standby:\n    primary_conninfo: host=db-0 user=replicator\n    \
                password: pw\n    slot: standby_1\n  init:\n    from_backup: latest\n\
                wal:\n  archive: false\n";
    let standby = ok(good, &[]).postgres.standby.expect("a standby");
    assert_eq!(standby.primary_conninfo, "host=db-0 user=replicator");
    assert_eq!(standby.slot.as_deref(), Some("standby_1"));
    assert_eq!(
        standby.password.map(|p| p.expose().to_owned()).as_deref(),
        Some("pw")
    );
    assert_eq!(
        problem("postgres:\n  standby:\n    primary_conninfo: host=db-0\nwal:\n  archive: false\n"),
        "cfg.yaml:2:3: postgres.standby: a standby is made from the repository: set \
         postgres.init.from_backup (latest)"
    );
    assert_eq!(
        problem(&good.replace("latest\n", "latest-or-init\n")),
        "cfg.yaml:7:5: postgres.init.from_backup: latest-or-init would bootstrap a new cluster \
         with initdb when the repository holds no backup, which can be no standby \
         (postgres.standby)\nHINT: use latest"
    );
    assert_eq!(
        problem(&good.replace("user=replicator", "user=replicator password=pw")),
        "cfg.yaml:3:5: postgres.standby.primary_conninfo: holds a password, which postgres \
         would show to anyone allowed to read its settings\nHINT: set \
         postgres.standby.password (or password_file) instead: pgward hands it to postgres in \
         a private password file"
    );
    assert_eq!(
        problem(&good.replace("standby_1", "Standby-1")),
        "cfg.yaml:5:11: postgres.standby.slot: invalid slot \"Standby-1\" (use lower-case \
         letters, digits and _, at most 63 characters)"
    );
    assert_eq!(
        problem(&good.replace("    primary_conninfo: host=db-0 user=replicator\n", "")),
        "cfg.yaml:2:3: postgres.standby.primary_conninfo: missing: the primary to stream from, \
         e.g. host=db-0 port=5432 user=replicator"
    );
}

/// Replication access is a list of networks, each as pg_hba.conf writes it.
#[test]
fn replication_allow_takes_networks_and_bare_addresses() {
    let config = ok(
        "postgres:\n  replication:\n    allow: [10.0.0.0/8, 192.168.1.7, \"fd00::/8\"]\n",
        &[],
    );
    assert_eq!(
        config.postgres.replication.allow,
        ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    );
    assert_eq!(
        problem("postgres:\n  replication:\n    allow: [10.0.0.0/33]\n"),
        "cfg.yaml:3:13: postgres.replication.allow[0]: invalid network \"10.0.0.0/33\" (use an \
         address or a CIDR such as 10.0.0.0/8 or fd00::/8)"
    );
}
