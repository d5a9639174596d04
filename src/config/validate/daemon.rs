//! pgward's own services: its log (`log:`), the daemon's control socket (`control:`) and
//! the HTTP endpoints (`metrics:`).

use super::super::size::parse_size;
use super::values::{choice, invalid};
use super::*;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

pub(super) fn validate_log(raw: RawLog, cx: &mut Cx<'_>) -> LogConfig {
    let RawLog {
        format,
        level,
        max_line_bytes,
    } = raw;
    LogConfig {
        format: cx
            .parse("log.format", format, |s| {
                let formats = [("text", LogFormat::Text), ("json", LogFormat::Json)];
                choice("log format", s, &formats)
            })
            .unwrap_or(LogFormat::Text),
        level: cx
            .parse("log.level", level, |s| {
                tracing_subscriber::EnvFilter::try_new(s)
                    .map(|_| s.to_owned())
                    .map_err(|e| format!("invalid log level {s:?}: {e}"))
            })
            .unwrap_or_else(|| "info".to_owned()),
        max_line_bytes: cx
            .parse(
                "log.max_line_bytes",
                max_line_bytes,
                |s| match parse_size(s)? {
                    0 => Err("max_line_bytes must be at least 1".to_owned()),
                    n => Ok(n),
                },
            )
            .unwrap_or(64 * 1024),
    }
}

pub(super) fn validate_control(
    raw: RawControl,
    socket_dir: &Path,
    cx: &mut Cx<'_>,
) -> ControlConfig {
    let RawControl { socket } = raw;
    let given = socket.is_some();
    let socket = cx
        .path("control.socket", socket)
        .unwrap_or_else(|| socket_dir.join("pgward.sock"));
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        let key = if given {
            "control.socket"
        } else {
            "postgres.socket_dir"
        };
        cx.at_value(
            key,
            format!(
                "control socket path {} is {len} bytes; unix sockets allow at most \
                 {MAX_SOCKET_PATH}",
                socket.display()
            ),
        );
    }
    ControlConfig { socket }
}

pub(super) fn validate_metrics(raw: RawMetrics, cx: &mut Cx<'_>) -> MetricsConfig {
    let RawMetrics {
        enabled,
        listen,
        username,
        password,
        password_file,
        tls,
        ready_in_recovery,
        queries_file,
        scrape_timeout,
        statement_timeout,
        lock_timeout,
    } = raw;
    let username = cx.string("metrics.username", username);
    let password = cx.secret("metrics.password", password, password_file);
    match (&username, &password) {
        (Some(_), None) => cx.at_value(
            "metrics.username",
            "metrics.username needs metrics.password (or password_file)",
        ),
        (None, Some(_)) => cx.at_value(
            "metrics.password",
            "metrics.password needs metrics.username",
        ),
        _ => {}
    }
    let RawTls {
        cert_file,
        key_file,
    } = tls;
    let tls = match (
        cx.path("metrics.tls.cert_file", cert_file),
        cx.path("metrics.tls.key_file", key_file),
    ) {
        (Some(cert_file), Some(key_file)) => Some(TlsConfig {
            cert_file,
            key_file,
        }),
        (None, None) => None,
        (Some(_), None) => {
            cx.at_value("metrics.tls", "metrics.tls needs key_file too");
            None
        }
        (None, Some(_)) => {
            cx.at_value("metrics.tls", "metrics.tls needs cert_file too");
            None
        }
    };
    MetricsConfig {
        enabled: cx.bool("metrics.enabled", enabled).unwrap_or(true),
        listen: cx
            .parse("metrics.listen", listen, |s| {
                s.parse::<std::net::SocketAddr>()
                    .map_err(|_| invalid("listen address", s, "host:port, e.g. 0.0.0.0:9187"))
            })
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 9187))),
        username,
        password,
        tls,
        ready_in_recovery: cx
            .bool("metrics.ready_in_recovery", ready_in_recovery)
            .unwrap_or(false),
        queries_file: cx.path("metrics.queries_file", queries_file),
        scrape_timeout: cx
            .duration("metrics.scrape_timeout", scrape_timeout)
            .unwrap_or(Duration::from_secs(10)),
        statement_timeout: cx
            .duration("metrics.statement_timeout", statement_timeout)
            .unwrap_or(Duration::from_secs(5)),
        lock_timeout: cx
            .duration("metrics.lock_timeout", lock_timeout)
            .unwrap_or(Duration::from_secs(1)),
    }
}
