//! The daemon's control socket and its archive marks against a process of the server's OS
//! user: every database superuser can run one (`COPY ... TO PROGRAM`), so whatever that user
//! can make the daemon (root) do, every superuser can. Each test performs the attack as the
//! `postgres` OS user and checks that nothing was written, uploaded, run or skipped.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common::{
    archived_marks_dir, file_storage, files_under, is_root, pgward_with, start_archiving,
    switch_and_wait_archived, Cluster, Pgward, BOOT,
};

/// Sends one request line to the control socket and prints each answer line: a client that
/// needs nothing but perl's core modules, so it can run as any user.
const CLIENT: &str = r#"
my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect $ARGV[0]: $!\n";
print $s "$ARGV[1]\n";
while (my $line = <$s>) { print $line }
"#;

/// The `postgres` OS user's uid and gid.
fn postgres_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("a postgres OS user (the server runs as it)");
    (user.uid.as_raw(), user.gid.as_raw())
}

/// `program args` as the `postgres` OS user.
fn as_postgres(program: &str, args: &[&str]) -> Output {
    let (uid, gid) = postgres_ids();
    Command::new(program)
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap_or_else(|e| panic!("run {program} as postgres: {e}"))
}

/// Sends `request` to the daemon at `socket` as the `postgres` OS user; the answer lines.
fn ask_as_postgres(socket: &Path, request: &Value) -> Vec<Value> {
    let out = as_postgres(
        "perl",
        &[
            "-MIO::Socket::UNIX",
            "-e",
            CLIENT,
            socket.to_str().unwrap(),
            &request.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// The message of the daemon's refusal, which must be its one answer.
fn refusal(answers: &[Value]) -> String {
    match answers {
        [answer] if answer["response"] == "error" => answer["message"].as_str().unwrap().to_owned(),
        _ => panic!("not refused: {answers:?}"),
    }
}

/// A directory only root may write, standing for `/etc`, `/root` or `/usr/local/bin`.
fn root_only_dir(cluster: &Cluster, name: &str) -> PathBuf {
    let dir = cluster.dir.join(name);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Whether the repository holds an object for the WAL file `name`.
fn archived(cluster: &Cluster, name: &str) -> bool {
    files_under(&cluster.dir.join("repo"))
        .iter()
        .any(|f| f.file_name().unwrap().to_string_lossy().starts_with(name))
}

/// The daemon logged a refusal of the `postgres` user's request.
fn assert_refusal_logged(pgward: &Pgward, reason: &str) {
    let (uid, _) = postgres_ids();
    let output = pgward.output();
    assert!(
        output
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&format!("uid {uid}")) && l.contains(reason)),
        "no WARN refusal of uid {uid} ({reason}) in:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_asked_by_the_server_user_writes_only_into_pg_wal() {
    if !is_root() {
        return;
    }
    let cluster = Cluster::new();
    let (_config, pgward, client) = start_archiving(&cluster, &file_storage(&cluster)).await;
    let name = switch_and_wait_archived(&client).await;
    let pg_wal = cluster.data_dir().join("pg_wal");
    let socket = cluster.control_socket();
    let etc = root_only_dir(&cluster, "etc");

    // Straight into a root-only directory.
    let fetch = |dest: &Path| json!({"request": "wal_fetch", "name": name, "dest": dest});
    let message = refusal(&ask_as_postgres(&socket, &fetch(&etc.join("cron-job"))));
    assert!(message.contains("pg_wal"), "{message}");
    // Through a directory symlink the server's user made inside pg_wal.
    let out = as_postgres(
        "ln",
        &[
            "-s",
            etc.to_str().unwrap(),
            pg_wal.join("sneaky").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    refusal(&ask_as_postgres(
        &socket,
        &fetch(&pg_wal.join("sneaky/cron-job")),
    ));
    assert_eq!(
        files_under(&etc),
        Vec::<PathBuf>::new(),
        "written outside pg_wal"
    );

    // RECOVERYXLOG as a symlink to a root file: the symlink is replaced, its target untouched.
    let victim = etc.join("victim");
    fs::write(&victim, "root's own\n").unwrap();
    let link = pg_wal.join("RECOVERYXLOG");
    let out = as_postgres(
        "ln",
        &["-s", victim.to_str().unwrap(), link.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let answers = ask_as_postgres(&socket, &fetch(&link));
    assert_eq!(
        answers,
        vec![json!({"response": "wal_fetched", "found": true})]
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root's own\n");
    assert_eq!(
        fs::metadata(&victim).unwrap().uid(),
        0,
        "the target was chowned"
    );
    let fetched = fs::symlink_metadata(&link).unwrap();
    assert!(fetched.is_file(), "RECOVERYXLOG is still a symlink");
    assert_eq!(fetched.uid(), postgres_ids().0);
    assert!(fs::read(&link).unwrap() == fs::read(pg_wal.join(&name)).unwrap());

    assert_refusal_logged(&pgward, "pg_wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_asked_by_the_server_user_reads_only_its_own_wal() {
    if !is_root() {
        return;
    }
    let cluster = Cluster::new();
    let (_config, pgward, client) = start_archiving(&cluster, &file_storage(&cluster)).await;
    switch_and_wait_archived(&client).await;
    let pg_wal = cluster.data_dir().join("pg_wal");
    let socket = cluster.control_socket();
    let push = |path: &Path| json!({"request": "wal_push", "path": path});

    // A root-only file (standing for /etc/shadow) behind a history file's name in pg_wal.
    let secret = cluster.dir.join("shadow");
    fs::write(&secret, "root:$6$secret:19000::::::\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let link = pg_wal.join("0000002A.history");
    let out = as_postgres(
        "ln",
        &["-s", secret.to_str().unwrap(), link.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    refusal(&ask_as_postgres(&socket, &push(&link)));

    // The same file under a WAL name outside pg_wal, root's and the server user's own.
    let etc = root_only_dir(&cluster, "etc");
    fs::copy(&secret, etc.join("0000002B.history")).unwrap();
    let message = refusal(&ask_as_postgres(
        &socket,
        &push(&etc.join("0000002B.history")),
    ));
    assert!(message.contains("pg_wal"), "{message}");
    let tmp = cluster.dir.join("postgres-tmp");
    fs::create_dir(&tmp).unwrap();
    std::os::unix::fs::chown(&tmp, Some(postgres_ids().0), Some(postgres_ids().1)).unwrap();
    let out = as_postgres(
        "sh",
        &[
            "-c",
            &format!("echo 1 > {}/0000002C.history", tmp.display()),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    refusal(&ask_as_postgres(
        &socket,
        &push(&tmp.join("0000002C.history")),
    ));

    // A FIFO in pg_wal: refused at once, not waited on.
    let fifo = pg_wal.join("0000002D.history");
    let out = as_postgres("mkfifo", &[fifo.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let message = refusal(&ask_as_postgres(&socket, &push(&fifo)));
    assert!(message.contains("regular file"), "{message}");

    for name in ["0000002A", "0000002B", "0000002C", "0000002D"] {
        assert!(!archived(&cluster, name), "{name}.history was uploaded");
    }
    assert_refusal_logged(&pgward, "symbolic link");
    assert_refusal_logged(&pgward, "pg_wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_only_for_root_and_never_when_disabled() {
    if !is_root() {
        return;
    }
    let cluster = Cluster::new();
    let ran = cluster.dir.join("ran");
    fs::create_dir(&ran).unwrap();
    // Jobs run as the server's user.
    fs::set_permissions(&ran, fs::Permissions::from_mode(0o777)).unwrap();
    let jobs = format!(
        "jobs:\n  - {{ name: touch, schedule: '@yearly', command: 'touch {r}/touch' }}\n  \
         - {{ name: off, schedule: '@yearly', enabled: false, command: 'touch {r}/off' }}\n",
        r = ran.display()
    );
    let config = cluster.config("password: pw", &jobs);
    let pgward = Pgward::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    cluster
        .wait_connect("postgres", "pw", "postgres", BOOT)
        .await;

    let run = |name: &str| json!({"request": "job_run", "name": name});
    let message = refusal(&ask_as_postgres(&cluster.control_socket(), &run("touch")));
    assert!(message.contains("root"), "{message}");
    let (code, _, err) = pgward_with(&config, &["jobs", "run", "off"]);
    assert_ne!(code, 0);
    assert!(err.contains("job off is disabled"), "{err}");
    let output = pgward.output();
    assert!(
        output.lines().any(|l| l.contains("WARN")
            && l.contains("refused job_run from uid 0")
            && l.contains("job off is disabled")),
        "no WARN refusal of root's run of a disabled job in:\n{output}"
    );
    assert_eq!(
        files_under(&ran),
        Vec::<PathBuf>::new(),
        "a refused job ran"
    );

    // Root runs an enabled job.
    let (code, out, err) = pgward_with(&config, &["jobs", "run", "touch"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(ran.join("touch").exists());
    assert_refusal_logged(&pgward, "job_run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_mark_does_not_stop_a_segment_from_being_archived() {
    if !is_root() {
        return;
    }
    let cluster = Cluster::new();
    let (_config, _pgward, client) = start_archiving(&cluster, &file_storage(&cluster)).await;
    switch_and_wait_archived(&client).await;
    let current: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_insert_lsn())", &[])
        .await
        .unwrap()
        .get(0);

    // The marks are root's, outside the data directory; postgres can read but not write them.
    let marks = archived_marks_dir(&cluster, &client).await;
    assert!(
        !marks.starts_with(cluster.data_dir()),
        "{}",
        marks.display()
    );
    for dir in [&marks, marks.parent().unwrap()] {
        let meta = fs::metadata(dir).unwrap();
        assert_eq!(meta.uid(), 0, "{}", dir.display());
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{} is writable by others",
            dir.display()
        );
    }
    let out = as_postgres("touch", &[marks.join(&current).to_str().unwrap()]);
    assert!(!out.status.success(), "the server's user wrote a mark");
    assert!(!marks.join(&current).exists());

    // Where the marks used to be, postgres can write: a mark there is no mark.
    let old = cluster.data_dir().join("pg_wal/pgward.archived");
    let out = as_postgres(
        "sh",
        &[
            "-c",
            &format!("mkdir -p {0} && touch {0}/{current}", old.display()),
        ],
    );
    assert!(out.status.success(), "{out:?}");

    client
        .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
        .await
        .unwrap();
    let switched = switch_and_wait_archived(&client).await;
    assert!(switched >= current, "{switched} < {current}");
    assert!(
        archived(&cluster, &current),
        "{current} is not in the archive"
    );
}
