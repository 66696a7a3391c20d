//! What the operator commands (`master-service report …`, `satellite-agent
//! status`) share: reaching a running service with operator credentials, and
//! printing answers as a table, CSV or JSON.
//!
//! Each cell is a JSON value, so JSON output keeps numbers as numbers while
//! the table and CSV show them as text.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// How answers are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON array of objects (one object for a single record).
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not a format: use table, csv or json")),
        }
    }
}

/// Rows under named columns.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Value>) {
        self.rows.push(row);
    }

    /// The table in `format`. A table with `single` set is one record: shown
    /// as `field  value` lines, and as one JSON object.
    pub fn render(&self, format: Format, single: bool) -> String {
        match format {
            Format::Table if single => self.render_vertical(),
            Format::Table => self.render_columns(),
            Format::Csv => self.render_csv(),
            Format::Json => {
                let objects: Vec<Value> = self
                    .rows
                    .iter()
                    .map(|row| {
                        Value::Object(
                            self.columns
                                .iter()
                                .zip(row)
                                .map(|(c, v)| ((*c).to_owned(), v.clone()))
                                .collect::<Map<_, _>>(),
                        )
                    })
                    .collect();
                let value = match (single, objects.first()) {
                    (true, Some(object)) => object.clone(),
                    _ => Value::Array(objects),
                };
                let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
                text.push('\n');
                text
            }
        }
    }

    fn render_columns(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(text).collect())
            .collect();
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for row in &cells {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<(&str, bool)>| {
            let mut text = String::new();
            for ((cell, numeric), width) in cells.into_iter().zip(&widths) {
                if numeric {
                    let _ = write!(text, "{cell:>width$}  ");
                } else {
                    let _ = write!(text, "{cell:<width$}  ");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, self.columns.iter().map(|c| (*c, false)).collect());
        line(
            &mut out,
            widths
                .iter()
                .map(|w| ("-".repeat(*w), false))
                .collect::<Vec<_>>()
                .iter()
                .map(|(s, n)| (s.as_str(), *n))
                .collect(),
        );
        for (row, values) in cells.iter().zip(&self.rows) {
            line(
                &mut out,
                row.iter()
                    .zip(values)
                    .map(|(cell, value)| (cell.as_str(), value.is_number()))
                    .collect(),
            );
        }
        if self.rows.is_empty() {
            out.push_str("(no rows)\n");
        }
        out
    }

    fn render_vertical(&self) -> String {
        let width = self.columns.iter().map(|c| c.len()).max().unwrap_or(0);
        let mut out = String::new();
        if let Some(row) = self.rows.first() {
            for (column, value) in self.columns.iter().zip(row) {
                let _ = writeln!(out, "{column:<width$}  {}", text(value));
            }
        }
        out
    }

    fn render_csv(&self) -> String {
        let mut out = String::new();
        let quote = |cell: &str| {
            if cell.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", cell.replace('"', "\"\""))
            } else {
                cell.to_owned()
            }
        };
        out.push_str(&self.columns.join(","));
        out.push('\n');
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|v| quote(&text(v))).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }
}

/// A cell as text: strings bare, numbers as JSON prints them.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A float cell (rounded to 6 decimals, so 0.1 + 0.2 prints as 0.3).
pub fn number(value: f64) -> Value {
    let rounded = (value * 1e6).round() / 1e6;
    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
}

/// Milliseconds since the epoch as an RFC 3339 UTC time; 0 is `never`.
pub fn time_ms(ms: i64) -> Value {
    if ms <= 0 {
        return Value::String("never".into());
    }
    Value::String(
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default(),
    )
}

/// The URL to call: `address` when given (`host:port` or a URL), else the
/// service's own listen address with an unspecified IP made loopback.
pub fn service_url(address: Option<&str>, listen: Option<&str>, default_listen: &str) -> String {
    let target = match address {
        Some(address) => address.to_owned(),
        None => {
            let listen = listen.unwrap_or(default_listen);
            listen
                .replace("0.0.0.0:", "127.0.0.1:")
                .replace("[::]:", "[::1]:")
        }
    };
    if target.contains("://") {
        target
    } else {
        format!("http://{target}")
    }
}

/// Adds `authorization: Basic …` to every call.
#[derive(Clone)]
pub struct BasicAuth(MetadataValue<Ascii>);

impl tonic::service::Interceptor for BasicAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose calls carry operator credentials.
pub type OperatorChannel = InterceptedService<Channel, BasicAuth>;

/// TLS for an operator command's calls: the same settings on both binaries.
///
/// TLS is on when any of these is given, when the address is `https://`, or
/// when `STORESYNC_TLS_CERT` is set (the service this environment configures
/// serves TLS only). The service's certificate is checked against `--tls-ca`,
/// else the system's roots.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientTls {
    /// CA certificate (PEM) that signed the service's certificate.
    #[arg(long = "tls-ca", env = "STORESYNC_CLI_TLS_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a service that requires one (mutual TLS).
    #[arg(
        long = "client-cert",
        env = "STORESYNC_CLI_CLIENT_CERT",
        global = true,
        requires = "key"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(
        long = "client-key",
        env = "STORESYNC_CLI_CLIENT_KEY",
        global = true,
        requires = "cert"
    )]
    pub key: Option<std::path::PathBuf>,
    /// The name the service's certificate is issued for, when the address is
    /// not it (e.g. calling 127.0.0.1 on a certificate for master.example).
    #[arg(long = "tls-domain", env = "STORESYNC_CLI_TLS_DOMAIN", global = true)]
    pub domain: Option<String>,
    /// `STORESYNC_TLS_CERT` is set where the command runs: the service serves TLS.
    #[arg(skip = std::env::var_os("STORESYNC_TLS_CERT").is_some())]
    pub service_serves_tls: bool,
}

impl ClientTls {
    /// Whether calls to `url` use TLS.
    pub fn enabled_for(&self, url: &str) -> bool {
        url.starts_with("https://")
            || self.ca.is_some()
            || self.cert.is_some()
            || self.domain.is_some()
            || self.service_serves_tls
    }

    /// `url` with the scheme these settings call it with.
    pub fn url(&self, url: &str) -> String {
        match url.strip_prefix("http://") {
            Some(rest) if self.enabled_for(url) => format!("https://{rest}"),
            _ => url.to_owned(),
        }
    }
}

/// Connects to `url` (5 s limit; 60 s per call) as `user`/`password`, in
/// plain text or, for an `https://` URL, TLS checked against the system's roots.
pub async fn connect(url: &str, user: &str, password: &str) -> Result<OperatorChannel, String> {
    connect_with(url, user, password, &ClientTls::default()).await
}

/// As [`connect`], with `tls` (see [`ClientTls`]).
pub async fn connect_with(
    url: &str,
    user: &str,
    password: &str,
    tls: &ClientTls,
) -> Result<OperatorChannel, String> {
    let header = crate::kit::auth::basic_header(user, password)
        .parse()
        .map_err(|_| "the operator user or password holds characters a header cannot".to_owned())?;
    let url = tls.url(url);
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("{url} is not a URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    if tls.enabled_for(&url) {
        let identity = tls.cert.as_deref().zip(tls.key.as_deref());
        let mut config = crate::kit::tls::client_config(tls.ca.as_deref(), identity)?;
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| format!("TLS settings for {url}: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map_or_else(String::new, |c| format!(" ({c})"));
        format!("cannot reach {url}: {e}{cause}; is the service running, and speaking TLS if and only if these calls do? (--address, --tls-ca, --client-cert)")
    })?;
    Ok(InterceptedService::new(channel, BasicAuth(header)))
}

/// A failed call, in words for the operator.
pub fn explain(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated => format!(
            "{}: check the operator user and password (STORESYNC_OPERATOR_USER / STORESYNC_OPERATOR_PASSWORD)",
            status.message()
        ),
        tonic::Code::Unavailable => format!("the service is unavailable: {}", status.message()),
        tonic::Code::Cancelled | tonic::Code::Unknown
            if status.code() == tonic::Code::Cancelled
                || status.message().contains("transport error") =>
        {
            // The connection broke under the call: say why, and the usual cause.
            let mut causes = String::new();
            let mut source = std::error::Error::source(status);
            while let Some(cause) = source {
                let _ = write!(causes, ": {cause}");
                source = cause.source();
            }
            format!(
                "the connection failed{causes} ({}); a service that requires client certificates \
                 (mutual TLS) closes it when none is given: --client-cert and --client-key",
                status.message()
            )
        }
        code => format!("{code:?}: {}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_json_keeps_numbers() {
        let mut table = Table::new(&["code", "units"]);
        table.push(vec![Value::String("A,\"B\"".into()), number(0.1 + 0.2)]);
        assert_eq!(
            table.render(Format::Csv, false),
            "code,units\n\"A,\"\"B\"\"\",0.3\n"
        );
        let json: Value =
            serde_json::from_str(&table.render(Format::Json, false)).unwrap_or_default();
        assert_eq!(json[0]["units"], serde_json::json!(0.3));
        assert!(table.render(Format::Table, false).contains("A,\"B\""));
        assert_eq!(
            service_url(None, Some("0.0.0.0:50051"), "x"),
            "http://127.0.0.1:50051"
        );
    }
}
