//! `master-service report …`: the operator's reports from the command line.
//! Calls the running master's `ReportService` over gRPC (nothing here reads
//! the database) and prints a table, CSV or JSON; every page is fetched, with
//! progress on stderr for long answers.

use serde_json::Value;
use storesync_shared::kit::cli::{
    self, number, time_ms, ClientTls, Format, OperatorChannel, Table,
};
use storesync_shared::proto::v1 as pb;
use storesync_shared::proto::v1::admin_service_client::AdminServiceClient;
use storesync_shared::proto::v1::report_service_client::ReportServiceClient;

/// Most pages one command fetches (1000 rows each): a bound, not a target.
const MAX_PAGES: usize = 10_000;
/// Page size the command asks for.
const PAGE_SIZE: u32 = 1000;

/// Which report, with its filters.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Report {
    /// Packs and units on hand per item and store, and totals per item.
    StockOnHand {
        /// Only items whose code starts with this.
        #[arg(long, default_value = "")]
        item_code_prefix: String,
        /// Only this item (repeatable).
        #[arg(long = "item-id")]
        item_ids: Vec<String>,
        /// Only this store (repeatable).
        #[arg(long = "store-id")]
        store_ids: Vec<String>,
        /// Also rows for stores without stock of an item.
        #[arg(long)]
        include_zero: bool,
    },
    /// Invoices, lines, units and value per store and kind over a date range.
    StoreActivity {
        /// First day, YYYY-MM-DD [default: 29 days before --to].
        #[arg(long, default_value = "")]
        from: String,
        /// Last day, YYYY-MM-DD [default: today, UTC].
        #[arg(long, default_value = "")]
        to: String,
        /// Only this store (repeatable).
        #[arg(long = "store-id")]
        store_ids: Vec<String>,
        /// One row per day too.
        #[arg(long)]
        per_day: bool,
    },
    /// Batches with stock left expiring before a date, soonest first.
    ExpiringStock {
        /// YYYY-MM-DD [default: 90 days from today].
        #[arg(long)]
        before: Option<String>,
        /// Only this store (repeatable).
        #[arg(long = "store-id")]
        store_ids: Vec<String>,
    },
    /// The sync state of every site in the "sync with" list.
    SyncStatus,
    /// Stock shipped between stores and not yet received, per store pair,
    /// with the age of the oldest shipment.
    StockInTransit {
        /// Only transfers from or to this store (repeatable).
        #[arg(long = "store-id")]
        store_ids: Vec<String>,
    },
    /// Sent requisitions whose response is not finalised, with units
    /// requested and supplied.
    OpenRequisitions {
        /// Only requisitions of or to this store (repeatable).
        #[arg(long = "store-id")]
        store_ids: Vec<String>,
    },
    /// Received transfers whose packs received differ from those shipped.
    ReceiptDiscrepancies {
        /// Only transfers from or to this store (repeatable).
        #[arg(long = "store-id")]
        store_ids: Vec<String>,
    },
    /// Upstream batches the master refused, most recently refused first:
    /// when, why, which record, how many times the site sent them.
    Rejections {
        /// Only this site.
        #[arg(long)]
        sync_id: Option<u32>,
        /// Only those refused in the last this many hours.
        #[arg(long)]
        since_hours: Option<u32>,
    },
}

/// Where and how to call, and how to print.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// The master to ask, host:port or URL [default: from --listen, else 127.0.0.1:50051].
    #[arg(long, env = "STORESYNC_ADDRESS", global = true)]
    pub address: Option<String>,
    /// table, csv or json.
    #[arg(long, default_value = "table", global = true)]
    pub format: Format,
    #[command(flatten)]
    pub tls: ClientTls,
}

/// Runs `report` against the master at `url` and returns the text to print.
pub async fn run_report(
    url: &str,
    user: &str,
    password: &str,
    report: Report,
    format: Format,
    tls: &ClientTls,
) -> Result<String, String> {
    let channel = cli::connect_with(url, user, password, tls).await?;
    if let Report::Rejections {
        sync_id,
        since_hours,
    } = report
    {
        return rejections(
            AdminServiceClient::new(channel),
            sync_id,
            since_hours,
            format,
        )
        .await;
    }
    let mut client = ReportServiceClient::new(channel);
    let explain = |status: tonic::Status| cli::explain(&status);
    match report {
        Report::StockOnHand {
            item_code_prefix,
            item_ids,
            store_ids,
            include_zero,
        } => {
            let mut rows = Table::new(&[
                "item_code",
                "item_name",
                "store_code",
                "packs",
                "units",
                "batches",
                "earliest_expiry",
            ]);
            let mut totals = Table::new(&["item_code", "stores_packs", "stores_units", "batches"]);
            let mut request = pb::StockOnHandRequest {
                item_ids,
                store_ids,
                item_code_prefix,
                include_zero,
                page_size: PAGE_SIZE,
                page_token: String::new(),
            };
            for page in 1..=MAX_PAGES {
                let answer = client
                    .stock_on_hand(request.clone())
                    .await
                    .map_err(explain)?
                    .into_inner();
                for row in answer.rows {
                    rows.push(vec![
                        row.item_code.into(),
                        row.item_name.into(),
                        row.store_code.into(),
                        number(row.packs_on_hand),
                        number(row.units_on_hand),
                        row.batches.into(),
                        row.earliest_expiry.into(),
                    ]);
                }
                for total in answer.totals {
                    // An item split across two pages has a total on each: keep the last.
                    if rows_last_code(&totals) == Some(total.item_code.as_str()) {
                        totals.rows.pop();
                    }
                    totals.push(vec![
                        total.item_code.into(),
                        number(total.packs_on_hand),
                        number(total.units_on_hand),
                        total.batches.into(),
                    ]);
                }
                if answer.next_page_token.is_empty() {
                    break;
                }
                progress(page, rows.rows.len());
                request.page_token = answer.next_page_token;
            }
            let mut out = rows.render(format, false);
            if format == Format::Table {
                out.push_str("\nTotals per item across the stores shown\n");
                out.push_str(&totals.render(format, false));
            }
            Ok(out)
        }
        Report::StoreActivity {
            from,
            to,
            store_ids,
            per_day,
        } => {
            let mut rows = Table::new(&[
                "store_code",
                "day",
                "kind",
                "invoices",
                "lines",
                "units",
                "value",
            ]);
            let mut request = pb::StoreActivityRequest {
                from_date: from,
                to_date: to,
                store_ids,
                per_day,
                page_size: PAGE_SIZE,
                page_token: String::new(),
            };
            for page in 1..=MAX_PAGES {
                let answer = client
                    .store_activity(request.clone())
                    .await
                    .map_err(explain)?
                    .into_inner();
                for row in answer.rows {
                    rows.push(vec![
                        row.store_code.into(),
                        row.day.into(),
                        row.kind.into(),
                        row.invoices.into(),
                        row.lines.into(),
                        number(row.units),
                        number(row.value),
                    ]);
                }
                if answer.next_page_token.is_empty() {
                    break;
                }
                progress(page, rows.rows.len());
                request.page_token = answer.next_page_token;
            }
            Ok(rows.render(format, false))
        }
        Report::ExpiringStock { before, store_ids } => {
            let before = before.unwrap_or_else(|| {
                (chrono::Utc::now().date_naive() + chrono::Duration::days(90))
                    .format("%Y-%m-%d")
                    .to_string()
            });
            let mut rows = Table::new(&[
                "expiry_date",
                "store_code",
                "item_code",
                "item_name",
                "batch",
                "units",
                "cost_value",
            ]);
            let mut request = pb::ExpiringStockRequest {
                before,
                store_ids,
                page_size: PAGE_SIZE,
                page_token: String::new(),
            };
            for page in 1..=MAX_PAGES {
                let answer = client
                    .expiring_stock(request.clone())
                    .await
                    .map_err(explain)?
                    .into_inner();
                for row in answer.rows {
                    rows.push(vec![
                        row.expiry_date.into(),
                        row.store_code.into(),
                        row.item_code.into(),
                        row.item_name.into(),
                        row.batch.into(),
                        number(row.units),
                        number(row.cost_value),
                    ]);
                }
                if answer.next_page_token.is_empty() {
                    break;
                }
                progress(page, rows.rows.len());
                request.page_token = answer.next_page_token;
            }
            Ok(rows.render(format, false))
        }
        Report::SyncStatus => sync_status(&mut client, format).await,
        Report::StockInTransit { store_ids } => {
            let mut rows = Table::new(&[
                "from_store",
                "to_store",
                "transfers",
                "packs",
                "delivered",
                "oldest_shipped",
                "oldest_age_hours",
            ]);
            let answer = client
                .stock_in_transit(pb::StockInTransitRequest { store_ids })
                .await
                .map_err(explain)?
                .into_inner();
            for row in answer.rows {
                rows.push(vec![
                    row.from_store_code.into(),
                    row.to_store_code.into(),
                    Value::from(row.transfers),
                    number(row.packs),
                    Value::from(row.delivered),
                    time_ms(row.oldest_shipped_at_ms),
                    number(row.oldest_age_ms as f64 / 3_600_000.0),
                ]);
            }
            Ok(rows.render(format, false))
        }
        Report::OpenRequisitions { store_ids } => {
            let mut rows = Table::new(&[
                "requesting_store",
                "supplying_store",
                "number",
                "sent",
                "lines",
                "units_requested",
                "units_supplied",
                "requisition_id",
                "response_id",
            ]);
            let mut request = pb::OpenRequisitionsRequest {
                store_ids,
                page_size: PAGE_SIZE,
                page_token: String::new(),
            };
            for page in 1..=MAX_PAGES {
                let answer = client
                    .open_requisitions(request.clone())
                    .await
                    .map_err(explain)?
                    .into_inner();
                for row in answer.rows {
                    rows.push(vec![
                        row.requesting_store_code.into(),
                        row.supplying_store_code.into(),
                        Value::from(row.requisition_number),
                        time_ms(row.sent_at_ms),
                        Value::from(row.lines),
                        number(row.units_requested),
                        number(row.units_supplied),
                        row.requisition_id.into(),
                        row.response_id.into(),
                    ]);
                }
                if answer.next_page_token.is_empty() {
                    break;
                }
                progress(page, rows.rows.len());
                request.page_token = answer.next_page_token;
            }
            Ok(rows.render(format, false))
        }
        Report::ReceiptDiscrepancies { store_ids } => {
            let mut rows = Table::new(&[
                "received",
                "from_store",
                "to_store",
                "packs_shipped",
                "packs_received",
                "discrepancy",
                "transfer_id",
            ]);
            let mut request = pb::ReceiptDiscrepanciesRequest {
                store_ids,
                page_size: PAGE_SIZE,
                page_token: String::new(),
            };
            for page in 1..=MAX_PAGES {
                let answer = client
                    .receipt_discrepancies(request.clone())
                    .await
                    .map_err(explain)?
                    .into_inner();
                for row in answer.rows {
                    rows.push(vec![
                        time_ms(row.received_at_ms),
                        row.from_store_code.into(),
                        row.to_store_code.into(),
                        number(row.packs_shipped),
                        number(row.packs_received),
                        number(row.discrepancy),
                        row.transfer_id.into(),
                    ]);
                }
                if answer.next_page_token.is_empty() {
                    break;
                }
                progress(page, rows.rows.len());
                request.page_token = answer.next_page_token;
            }
            Ok(rows.render(format, false))
        }
        Report::Rejections { .. } => unreachable!("answered above"),
    }
}

async fn rejections(
    mut client: AdminServiceClient<OperatorChannel>,
    sync_id: Option<u32>,
    since_hours: Option<u32>,
    format: Format,
) -> Result<String, String> {
    let since_ms = since_hours.map_or(0, |hours| {
        storesync_shared::domain::validate::now_ms() - i64::from(hours) * 3_600_000
    });
    let mut table = Table::new(&[
        "sync_id",
        "last_refused",
        "attempts",
        "seq",
        "code",
        "record",
        "reason",
        "first_refused",
    ]);
    let mut request = pb::ListRefusalsRequest {
        sync_id: sync_id.unwrap_or(0),
        since_ms,
        page_size: PAGE_SIZE,
        page_token: String::new(),
    };
    for _ in 1..=MAX_PAGES {
        let answer = client
            .list_refusals(request.clone())
            .await
            .map_err(|status| cli::explain(&status))?
            .into_inner();
        for refusal in answer.refusals {
            let record = refusal.record.map_or(String::new(), |r| {
                let table = pb::Table::try_from(r.table).map_or_else(
                    |_| r.table.to_string(),
                    |t| t.as_str_name().to_ascii_lowercase(),
                );
                format!("{table} {}", r.id)
            });
            table.push(vec![
                refusal.sync_id.into(),
                time_ms(refusal.last_at_ms),
                refusal.attempts.into(),
                format!("{}..{}", refusal.first_seq, refusal.last_seq).into(),
                refusal.code.into(),
                record.into(),
                refusal.reason.into(),
                time_ms(refusal.first_at_ms),
            ]);
        }
        if answer.next_page_token.is_empty() {
            break;
        }
        request.page_token = answer.next_page_token;
    }
    Ok(table.render(format, false))
}

async fn sync_status(
    client: &mut ReportServiceClient<OperatorChannel>,
    format: Format,
) -> Result<String, String> {
    let sites = client
        .sync_status(pb::SyncStatusRequest {})
        .await
        .map_err(|status| cli::explain(&status))?
        .into_inner()
        .sites;
    let mut table = Table::new(&[
        "sync_id",
        "site",
        "store",
        "connected",
        "mode",
        "last_sync",
        "received",
        "backlog",
        "refused",
        "down_pending",
        "oldest_pending_s",
        "init",
        "version",
        "last_check",
        "check_queued",
        "last_error",
    ]);
    for site in sites {
        let connected = match (site.connected, site.ever_connected) {
            (true, _) => "yes",
            (false, true) => "no",
            (false, false) => "never",
        };
        let mode = match pb::SyncMode::try_from(site.mode) {
            Ok(pb::SyncMode::Streaming) => "streaming",
            Ok(pb::SyncMode::Interval) => "interval",
            _ => "",
        };
        let init = if site.initialising {
            format!("{}/{}", site.init_records_done, site.init_records_total)
        } else {
            String::new()
        };
        // The latest integrity check (outcome and when), and one requested
        // and not yet run (since when, with the attempts a session's end cut).
        let last_check = if site.last_check_at_ms > 0 {
            format!(
                "{} {}",
                site.last_check_outcome,
                text_of(&time_ms(site.last_check_at_ms))
            )
        } else {
            String::new()
        };
        let check_queued = match (site.check_queued_at_ms, site.check_attempts) {
            (0, _) => String::new(),
            (at, 0) => text_of(&time_ms(at)),
            (at, attempts) => format!("{} ({attempts} cut)", text_of(&time_ms(at))),
        };
        let last_error = if site.last_error.is_empty() {
            String::new()
        } else {
            format!(
                "{} {}",
                text_of(&time_ms(site.last_error_at_ms)),
                site.last_error
            )
        };
        table.push(vec![
            site.sync_id.into(),
            site.site_name.into(),
            site.store_code.into(),
            connected.into(),
            mode.into(),
            time_ms(site.last_sync_at_ms),
            site.upstream_records_received.into(),
            site.upstream_backlog_reported.into(),
            site.refusals.into(),
            site.downstream_pending.into(),
            (site.downstream_oldest_pending_age_ms / 1000).into(),
            init.into(),
            site.agent_version.into(),
            last_check.into(),
            check_queued.into(),
            last_error.into(),
        ]);
    }
    Ok(table.render(format, false))
}

fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

fn rows_last_code(table: &Table) -> Option<&str> {
    table
        .rows
        .last()
        .and_then(|row| row.first())
        .and_then(Value::as_str)
}

/// Long answers: say how far we are, on stderr (stdout is the answer).
fn progress(page: usize, rows: usize) {
    eprintln!("… page {page}: {rows} rows so far");
}

/// Which sites `master-service verify` checks, and how.
#[derive(Clone, Debug, clap::Args)]
pub struct VerifyArgs {
    /// Check this site (repeatable).
    #[arg(long = "site", required_unless_present = "all")]
    pub sites: Vec<u32>,
    /// Check every satellite in the "sync with" list.
    #[arg(long, conflicts_with = "sites")]
    pub all: bool,
    /// Name the differences, change nothing.
    #[arg(long)]
    pub report_only: bool,
    /// Wait up to this many seconds for each site's result (at most 3600);
    /// a site not checked by then is shown QUEUED (checked at its next
    /// session). Without it, only a site connected to this master process is
    /// checked now.
    #[arg(long = "wait", value_name = "SECONDS", default_value_t = 0)]
    pub wait_seconds: u32,
}

/// Runs `AdminService.VerifySites` against the master at `url` and returns
/// the text to print: one row per site, then one per differing row, then
/// the stock lines whose packs differ from their movements (with `json`,
/// one object holding the three lists).
pub async fn run_verify(
    url: &str,
    user: &str,
    password: &str,
    args: VerifyArgs,
    format: Format,
    tls: &ClientTls,
) -> Result<String, String> {
    let channel = cli::connect_with(url, user, password, tls).await?;
    let mut client = AdminServiceClient::new(channel);
    let answer = client
        .verify_sites(pb::VerifySitesRequest {
            sync_ids: if args.all { Vec::new() } else { args.sites },
            report_only: args.report_only,
            wait_seconds: args.wait_seconds,
        })
        .await
        .map_err(|status| cli::explain(&status))?
        .into_inner();
    let mut sites = Table::new(&[
        "sync_id",
        "outcome",
        "compared",
        "differing",
        "repaired",
        "ledger_problems",
        "bytes",
        "round_trips",
        "took_ms",
        "message",
    ]);
    let mut rows = Table::new(&["sync_id", "table", "id", "side", "repair"]);
    let mut ledger = Table::new(&[
        "sync_id",
        "where",
        "stock_line_id",
        "item_id",
        "total_packs",
        "available_packs",
        "expected_packs",
    ]);
    for site in &answer.sites {
        sites.push(vec![
            site.sync_id.into(),
            site.outcome().as_str_name().into(),
            site.rows_compared.into(),
            site.rows_differing.into(),
            site.rows_repaired.into(),
            (site.site_ledger_total + site.master_ledger_total).into(),
            site.bytes_exchanged.into(),
            site.round_trips.into(),
            (site.finished_at_ms - site.started_at_ms).into(),
            site.message.clone().into(),
        ]);
        for difference in &site.differences {
            rows.push(vec![
                site.sync_id.into(),
                difference.table().as_str_name().to_ascii_lowercase().into(),
                difference.id.clone().into(),
                difference.side().as_str_name().to_ascii_lowercase().into(),
                difference.repair.clone().into(),
            ]);
        }
        for (place, problems) in [("site", &site.site_ledger), ("master", &site.master_ledger)] {
            for problem in problems {
                ledger.push(vec![
                    site.sync_id.into(),
                    place.into(),
                    problem.stock_line_id.clone().into(),
                    problem.item_id.clone().into(),
                    number(problem.total_packs),
                    number(problem.available_packs),
                    number(problem.expected_total_packs),
                ]);
            }
        }
    }
    if format == Format::Json {
        let parse = |table: &Table| {
            serde_json::from_str::<Value>(&table.render(Format::Json, false)).unwrap_or(Value::Null)
        };
        let mut text = serde_json::to_string_pretty(&serde_json::json!({
            "sites": parse(&sites),
            "differences": parse(&rows),
            "ledger": parse(&ledger),
        }))
        .unwrap_or_default();
        text.push('\n');
        return Ok(text);
    }
    let mut text = sites.render(format, false);
    if !rows.rows.is_empty() {
        text.push('\n');
        text.push_str(&rows.render(format, false));
    }
    if !ledger.rows.is_empty() {
        text.push('\n');
        text.push_str(&ledger.render(format, false));
    }
    Ok(text)
}
