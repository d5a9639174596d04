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
    for r in results {
        let verdict = if r.ok { "OK" } else { "FAILED" };
        println!("{:<20} {:<6} {}", r.name, verdict, r.detail);
    }
    Ok(())
}
