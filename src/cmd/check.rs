//! `pgward check [--json]`: the health checks, each OK or FAILED with the reason; exit 1 when
//! any failed.

use anyhow::Result;

use crate::check::{all_ok, CheckResult};
use crate::site::Site;

pub async fn check(site: &Site, json: bool) -> Result<i32> {
    let results = site.checks().await;
    print(&results, json)?;
    Ok(if all_ok(&results) { 0 } else { 1 })
}

/// `results` as a table (or JSON).
fn print(results: &[CheckResult], json: bool) -> Result<()> {
    if json {
        let value = serde_json::json!({ "ok": all_ok(results), "checks": results });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    print!("{}", table(results));
    Ok(())
}

/// One line per check; a detail's further lines (its `HINT:`) under the first.
fn table(results: &[CheckResult]) -> String {
    let mut out = String::new();
    for r in results {
        let verdict = if r.ok { "OK" } else { "FAILED" };
        let mut lines = r.detail.lines();
        let first = lines.next().unwrap_or_default();
        out.push_str(&format!("{:<20} {:<6} {first}\n", r.name, verdict));
        for more in lines {
            out.push_str(&format!("{:<28}{more}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_goes_under_its_check_s_detail() {
        let results = [
            CheckResult {
                name: "postgres",
                ok: true,
                detail: "reachable".into(),
            },
            CheckResult {
                name: "archive_mode",
                ok: false,
                detail: "off: WAL is not archived\nHINT: set wal.archive: true".into(),
            },
        ];
        assert_eq!(
            table(&results),
            "postgres             OK     reachable\n\
             archive_mode         FAILED off: WAL is not archived\n\
             \x20                           HINT: set wal.archive: true\n"
        );
    }
}
