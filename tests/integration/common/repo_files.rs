//! The repository's own files the tests read, and the tools they check them with: the example
//! configs (`configs/`, `image/`) and promtool on `image/prometheus/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

/// The checkout's root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.yaml` directly in `configs/` and `image/`: the example pgward configs.
pub fn example_configs() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["configs", "image"] {
        for entry in std::fs::read_dir(repo_root().join(dir)).expect("read the examples' directory")
        {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// `image/prometheus/`: Prometheus's config, the alert rules and their tests, the dashboard.
pub fn prometheus_dir() -> PathBuf {
    repo_root().join("image/prometheus")
}

/// promtool from `.tools/bin` (where `make test` installs it), else from `PATH`.
fn promtool() -> PathBuf {
    let installed = repo_root().join(".tools/bin/promtool");
    if installed.is_file() {
        return installed;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "promtool is not in {} nor on PATH\nHINT: `make test` installs it \
             (scripts/test-deps.sh, from Debian's prometheus package)",
            installed.display()
        )
    })
}

/// Runs promtool in `image/prometheus/` with `stdin`: its exit status and output.
pub fn promtool_run(args: &[&str], stdin: Option<&str>) -> (ExitStatus, String) {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(prometheus_dir())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("promtool's stdin");
        pipe.write_all(input.as_bytes()).expect("write to promtool");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait for promtool");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status, output)
}
