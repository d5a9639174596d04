//! `pgward promote`: a standby (or a restore paused at its target) becomes a primary.

use std::time::Duration;

use anyhow::Result;

use crate::backup::take::connect;
use crate::postgres::promotion::promote as promote_server;
use crate::site::Site;

/// How long `promote` waits for the server to leave recovery (postgres's own default for
/// `pg_promote`).
const PROMOTE_WAIT: Duration = Duration::from_secs(60);

/// Exit 0 once the server is a primary.
pub async fn promote(site: &Site) -> Result<i32> {
    let client = connect(&site.target()).await?;
    let timeline = promote_server(&client, PROMOTE_WAIT).await?;
    println!(
        "promoted: the server is a primary, writing on timeline {}",
        timeline.0
    );
    Ok(0)
}
