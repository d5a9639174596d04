//! The postgres collector: postgres_exporter's metrics, gathered over one kept session.
//!
//! Owns the metrics session with the server and what is read through it; knows nothing of
//! HTTP (the server module asks [`PostgresCollector::scrape`] for [`Families`] and renders
//! them) nor of pgward's own metrics.
//!
//! What a scrape may cost the server is bounded:
//! - one session at most, kept across scrapes (opened again only when broken), named
//!   `pgward_exporter`, with the configured `statement_timeout` and `lock_timeout`;
//! - scrapes that arrive while one collects wait for it and get its result: one collection
//!   at a time, whatever the number of scrapers;
//! - `scrape_timeout` bounds a whole collection; a query still running then is cancelled
//!   (a cancel request, so the session stays usable) and the collectors not yet run are
//!   marked failed.
//!
//! A failing query fails its collector only (`pg_scrape_collector_success{collector} 0`);
//! a server that cannot be reached is `pg_up 0`. Neither is an error of the scrape: the
//! families say what happened.

mod builtin;
mod namespace;
mod queries;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage, SimpleQueryRow};
use tracing::Instrument;

use self::namespace::{Namespace, Version};
use crate::config::MetricsConfig;
use crate::metrics::text::Families;
use crate::postgres::ready::Target;

pub use self::builtin::setting_metric;

/// `application_name` of the metrics session.
pub const APPLICATION_NAME: &str = "pgward_exporter";

/// How long a cancel request may take before the session is given up instead.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a new session, within the scrape's deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const STATIC_QUERY: &str = "SELECT version(), current_setting('server_version_num')";

/// What one collector reads.
enum Source {
    Namespace(Namespace),
    Settings,
}

impl Source {
    fn collector(&self) -> &str {
        match self {
            Source::Namespace(ns) => &ns.collector,
            Source::Settings => builtin::SETTINGS_COLLECTOR,
        }
    }
}

/// Collects postgres_exporter's families (and the custom queries') from one server.
pub struct PostgresCollector {
    target: Target,
    /// The `server` label: `<socket dir>:<port>`, as postgres_exporter writes its DSN's host.
    server: String,
    scrape_timeout: Duration,
    statement_timeout: Duration,
    lock_timeout: Duration,
    sources: Vec<Source>,
    /// Held for a whole collection.
    session: tokio::sync::Mutex<Session>,
    last: std::sync::Mutex<Last>,
}

/// What lives across scrapes.
#[derive(Default)]
struct Session {
    client: Option<Client>,
    /// A query was sent and its answer not read: the scrape waiting for it was dropped.
    in_flight: Option<CancelToken>,
    /// The cancel request of a query cut off by the deadline; `true` when it was delivered.
    cancelling: Option<tokio::task::JoinHandle<bool>>,
    scrapes: u64,
    /// Whether the server answered at the last scrape; `None` before the first.
    up: Option<bool>,
    /// Collectors that failed at the last scrape, to log changes only.
    failing: BTreeSet<String>,
    /// Results of queries with `cache_seconds`, by collector.
    cache: HashMap<String, (Instant, Families)>,
}

/// The latest collection, for scrapes that waited for it.
#[derive(Default)]
struct Last {
    generation: u64,
    /// Kept only while scrapes wait for it: thousands of labelled samples are not held
    /// between scrapes.
    families: Option<Families>,
    /// Scrapes waiting for the session.
    waiting: usize,
}

/// One scrape waiting for (or holding) the session; the last one out drops the kept result.
struct Waiting<'a>(&'a std::sync::Mutex<Last>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        last.waiting -= 1;
        if last.waiting == 0 {
            last.families = None;
        }
    }
}

impl PostgresCollector {
    /// Reads and checks `config.queries_file`; connects to nothing yet. A custom query named
    /// like a built-in namespace (`pg_replication`, `pg_database`...) replaces it, as in
    /// postgres_exporter.
    pub fn new(target: Target, config: &MetricsConfig) -> anyhow::Result<PostgresCollector> {
        let builtin = builtin::namespaces();
        let taken: Vec<&str> = builtin
            .iter()
            .map(|ns| ns.collector.as_str())
            .chain([builtin::SETTINGS_COLLECTOR])
            .collect();
        let custom = match &config.queries_file {
            None => Vec::new(),
            Some(path) => {
                let custom = queries::load(path)?;
                let clashes: Vec<String> = custom
                    .iter()
                    .filter(|ns| taken.contains(&ns.name.as_str()))
                    .map(|ns| {
                        format!(
                            "{}: query {}: the name is a built-in collector's; choose another",
                            path.display(),
                            ns.name
                        )
                    })
                    .collect();
                if !clashes.is_empty() {
                    bail!(clashes.join("\n"));
                }
                custom
            }
        };
        let mut sources = Vec::new();
        for ns in builtin {
            if custom.iter().any(|c| c.name == ns.name) {
                tracing::info!(
                    namespace = ns.name,
                    "the custom query of the same name replaces the built-in one"
                );
            } else {
                sources.push(Source::Namespace(ns));
            }
        }
        sources.push(Source::Settings);
        sources.extend(custom.into_iter().map(Source::Namespace));
        Ok(PostgresCollector {
            server: format!("{}:{}", target.socket_dir.display(), target.port),
            target,
            scrape_timeout: config.scrape_timeout,
            statement_timeout: config.statement_timeout,
            lock_timeout: config.lock_timeout,
            sources,
            session: tokio::sync::Mutex::new(Session::default()),
            last: std::sync::Mutex::new(Last::default()),
        })
    }

    /// The `collector` labels, in collection order.
    pub fn collectors(&self) -> Vec<&str> {
        self.sources.iter().map(Source::collector).collect()
    }

    /// One scrape's families. A scrape that arrives while another collects waits for that
    /// collection and returns its result.
    ///
    /// Cancel safe: a query left running by a dropped scrape is cancelled at the start of
    /// the next collection.
    pub async fn scrape(&self) -> Families {
        let seen = {
            let mut last = self.last.lock().expect("last scrape lock poisoned");
            last.waiting += 1;
            last.generation
        };
        // Leaves the count right even if this scrape is dropped while it waits.
        let _waiting = Waiting(&self.last);
        let mut session = self.session.lock().await;
        {
            let last = self.last.lock().expect("last scrape lock poisoned");
            if let (true, Some(families)) = (last.generation > seen, &last.families) {
                // A collection finished while this scrape waited: it is at least as fresh
                // as this scrape.
                return families.clone();
            }
        }
        let families = self
            .collect(&mut session)
            .instrument(tracing::info_span!("metrics_scrape"))
            .await;
        let mut last = self.last.lock().expect("last scrape lock poisoned");
        last.generation += 1;
        // This scrape is one of the waiting ones: keep the result only for the others.
        last.families = (last.waiting > 1).then(|| families.clone());
        families
    }

    async fn collect(&self, session: &mut Session) -> Families {
        let started = Instant::now();
        let deadline = started + self.scrape_timeout;
        session.scrapes += 1;
        let mut out = Families::new();

        let version = match self.open(session, deadline).await {
            Ok((version, text)) => {
                if session.up == Some(false) {
                    tracing::info!("metrics: postgres answers again");
                }
                session.up = Some(true);
                out.untyped("pg_static", "Version string as reported by postgres")
                    .sample(
                        &[
                            ("short_version", &version.to_string()),
                            ("version", &text),
                            ("server", &self.server),
                        ],
                        1.0,
                    );
                Some(version)
            }
            Err(e) => {
                match session.up {
                    Some(true) => tracing::warn!("metrics: postgres does not answer: {e}"),
                    Some(false) => tracing::debug!("metrics: postgres does not answer: {e}"),
                    // At start-up the server may well not be up yet.
                    None => tracing::info!("metrics: postgres does not answer yet: {e}"),
                }
                session.up = Some(false);
                None
            }
        };
        out.gauge(
            "pg_up",
            "Whether the last scrape of metrics from PostgreSQL was able to connect to the \
             server (1 for yes, 0 for no).",
        )
        .sample(&[], if version.is_some() { 1.0 } else { 0.0 });

        let mut any_failed = version.is_none();
        let mut failing = BTreeSet::new();
        for source in &self.sources {
            let collector = source.collector();
            let began = Instant::now();
            let result = match version {
                Some(version) => self.run(session, source, version, deadline, &mut out).await,
                None => Err("no connection".to_owned()),
            };
            out.gauge(
                "pg_scrape_collector_duration_seconds",
                "postgres_exporter: Duration of a collector scrape.",
            )
            .sample(&[("collector", collector)], began.elapsed().as_secs_f64());
            out.gauge(
                "pg_scrape_collector_success",
                "postgres_exporter: Whether a collector succeeded.",
            )
            .sample(
                &[("collector", collector)],
                if result.is_ok() { 1.0 } else { 0.0 },
            );
            if let Err(e) = result {
                any_failed = true;
                if version.is_some() && !session.failing.contains(collector) {
                    tracing::warn!(collector, "metrics collector failed: {e}");
                }
                failing.insert(collector.to_owned());
            } else if session.failing.contains(collector) && version.is_some() {
                tracing::info!(collector, "metrics collector works again");
            }
        }
        if version.is_some() {
            session.failing = failing;
        }

        out.gauge(
            "pg_exporter_last_scrape_duration_seconds",
            "Duration of the last scrape of metrics from PostgreSQL.",
        )
        .sample(&[], started.elapsed().as_secs_f64());
        out.gauge(
            "pg_exporter_last_scrape_error",
            "Whether the last scrape of metrics from PostgreSQL resulted in an error (1 for \
             error, 0 for success).",
        )
        .sample(&[], if any_failed { 1.0 } else { 0.0 });
        out.counter(
            "pg_exporter_scrapes_total",
            "Total number of times PostgreSQL was scraped for metrics.",
        )
        .sample(&[], session.scrapes as f64);
        out
    }

    /// One collector: its families go to `out` only when its query succeeded.
    async fn run(
        &self,
        session: &mut Session,
        source: &Source,
        version: Version,
        deadline: Instant,
        out: &mut Families,
    ) -> Result<(), String> {
        let ns = match source {
            Source::Settings => {
                let rows = self
                    .query(session, builtin::SETTINGS_QUERY, deadline)
                    .await?;
                builtin::settings_families(&rows, &self.server, out);
                return Ok(());
            }
            Source::Namespace(ns) => ns,
        };
        if ns.versions.as_ref().is_some_and(|r| !r.contains(version)) {
            return Ok(());
        }
        if let (Some(ttl), Some((at, cached))) = (ns.cache, session.cache.get(&ns.collector)) {
            if at.elapsed() < ttl {
                out.merge(cached.clone());
                return Ok(());
            }
        }
        let rows = self.query(session, &ns.query, deadline).await?;
        let mut families = Families::new();
        ns.families(&rows, &self.server, &mut families);
        if ns.cache.is_some() {
            session
                .cache
                .insert(ns.collector.clone(), (Instant::now(), families.clone()));
        }
        out.merge(families);
        Ok(())
    }

    /// Makes sure a session is open and answers: the server's version, numeric and as text.
    async fn open(
        &self,
        session: &mut Session,
        deadline: Instant,
    ) -> Result<(Version, String), String> {
        // A query a dropped scrape left running would delay every query behind it.
        start_cancel(session);
        if let Some(cancel) = session.cancelling.take() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !matches!(tokio::time::timeout(remaining, cancel).await, Ok(Ok(true))) {
                tracing::debug!("metrics: a query could not be cancelled: new session");
                session.client = None;
            }
        }
        if session.client.as_ref().is_some_and(Client::is_closed) {
            session.client = None;
        }
        let fresh = session.client.is_none();
        if fresh {
            session.client = Some(self.connect(deadline).await?);
        }
        let rows = match self.query(session, STATIC_QUERY, deadline).await {
            Ok(rows) => rows,
            // The kept session broke since the last scrape (a restart): one new session.
            Err(_) if !fresh && session.client.is_none() => {
                session.client = Some(self.connect(deadline).await?);
                self.query(session, STATIC_QUERY, deadline).await?
            }
            Err(e) => return Err(e),
        };
        let row = rows.first().ok_or("version(): no row")?;
        let text = row.get(0).unwrap_or("").to_owned();
        let num: u32 = row
            .get(1)
            .and_then(|n| n.parse().ok())
            .ok_or("server_version_num is not a number")?;
        Ok((Version::from_num(num), text))
    }

    async fn connect(&self, deadline: Instant) -> Result<Client, String> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err("no time left to connect (metrics.scrape_timeout)".into());
        }
        let mut config = self.target.config();
        config
            .application_name(APPLICATION_NAME)
            // ISO dates in UTC: timestamps are read back from their text (see namespace).
            .options(format!(
                "-c statement_timeout={} -c lock_timeout={} -c DateStyle=ISO -c TimeZone=UTC",
                self.statement_timeout.as_millis(),
                self.lock_timeout.as_millis()
            ))
            .connect_timeout(remaining.min(CONNECT_TIMEOUT));
        let (client, connection) = tokio::time::timeout(remaining, config.connect(NoTls))
            .await
            .map_err(|_| "connect: no answer within metrics.scrape_timeout".to_owned())?
            .map_err(|e| format!("connect: {}", describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("metrics session closed: {e}");
            }
        });
        Ok(client)
    }

    /// Runs `sql` within the deadline. Cut off by it, the query is cancelled in the
    /// background; the next collection waits for that before its first query.
    async fn query(
        &self,
        session: &mut Session,
        sql: &str,
        deadline: Instant,
    ) -> Result<Vec<SimpleQueryRow>, String> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!(
                "not run: the scrape took metrics.scrape_timeout ({}) already",
                humantime::format_duration(self.scrape_timeout)
            ));
        }
        let client = session.client.as_ref().ok_or("no connection")?;
        session.in_flight = Some(client.cancel_token());
        match tokio::time::timeout(remaining, client.simple_query(sql)).await {
            Ok(Ok(messages)) => {
                session.in_flight = None;
                Ok(messages
                    .into_iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(row) => Some(row),
                        _ => None,
                    })
                    .collect())
            }
            Ok(Err(e)) => {
                session.in_flight = None;
                if client.is_closed() {
                    session.client = None;
                }
                Err(describe(&e))
            }
            Err(_) => {
                start_cancel(session);
                Err(format!(
                    "the query still ran at the scrape's deadline, metrics.scrape_timeout \
                     ({}), and was cancelled\nHINT: \
                     raise metrics.scrape_timeout (Prometheus's scrape_timeout above it), or \
                     make the query cheaper",
                    humantime::format_duration(self.scrape_timeout)
                ))
            }
        }
    }
}

/// Sends the cancel request of the query in flight, if any, without waiting for it.
fn start_cancel(session: &mut Session) {
    if let Some(token) = session.in_flight.take() {
        session.cancelling = Some(tokio::spawn(async move {
            matches!(
                tokio::time::timeout(CANCEL_TIMEOUT, token.cancel_query(NoTls)).await,
                Ok(Ok(()))
            )
        }));
    }
}

/// The server's own message when there is one (`ERROR: canceling statement due to lock
/// timeout`), else the client's.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}

    /// The HTTP server scrapes from its own tasks.
    #[test]
    fn the_collector_is_shared_and_its_scrape_runs_on_any_task() {
        assert_send_sync::<PostgresCollector>();
        let target = Target {
            socket_dir: "/nonexistent".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: "postgres".into(),
        };
        let config = crate::config::from_str("", "<test>", &|_| None).expect("defaults");
        let collector = PostgresCollector::new(target, &config.metrics).expect("no queries file");
        assert_send(&collector.scrape());
        assert_eq!(collector.server, "/nonexistent:5432");
        assert_eq!(
            collector.collectors(),
            [
                "database",
                "bgwriter",
                "stat_checkpointer",
                "stat_database",
                "stat_database_conflicts",
                "locks",
                "stat_activity",
                "stat_archiver",
                "stat_replication",
                "replication_slots",
                "replication",
                "standby",
                "postmaster",
                "settings"
            ]
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_pg_up_0_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target {
            socket_dir: dir.path().to_owned(),
            port: 1,
            user: "postgres".into(),
            password: None,
            dbname: "postgres".into(),
        };
        let config = crate::config::from_str("", "<test>", &|_| None).expect("defaults");
        let collector = PostgresCollector::new(target, &config.metrics).unwrap();
        for scrape in 1..=2 {
            let families = collector.scrape().await;
            let value = |name: &str| families.get(name).unwrap().samples().next().unwrap().1;
            assert_eq!(value("pg_up"), 0.0);
            assert_eq!(value("pg_exporter_last_scrape_error"), 1.0);
            assert_eq!(value("pg_exporter_scrapes_total"), f64::from(scrape));
            let success = families.get("pg_scrape_collector_success").unwrap();
            assert_eq!(success.samples().count(), 14);
            assert!(success.samples().all(|(_, v)| v == 0.0));
            assert!(families.get("pg_static").is_none());
        }
    }
}
