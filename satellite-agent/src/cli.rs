//! `satellite-agent status`: the running satellite's sync state (and, when
//! asked, its store's stock on hand), read over gRPC as an operator would,
//! printed as a table, CSV or JSON.

use storesync_shared::kit::cli::{self, number, time_ms, Format, Table};
use storesync_shared::proto::v1 as pb;

/// `satellite-agent status` options.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// The satellite to ask, host:port or URL [default: from STORESYNC_LISTEN, else 127.0.0.1:50052].
    #[arg(long, env = "STORESYNC_ADDRESS")]
    pub address: Option<String>,
    /// table, csv or json.
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Show the store's stock on hand instead of the sync state.
    #[arg(long)]
    pub stock: bool,
}

/// Asks the satellite at `url` and returns the text to print.
pub async fn status(
    url: &str,
    user: &str,
    password: &str,
    args: &StatusArgs,
) -> Result<String, String> {
    let channel = cli::connect(url, user, password).await?;
    if args.stock {
        let rows = pb::store_service_client::StoreServiceClient::new(channel)
            .stock_on_hand(pb::StoreStockOnHandRequest::default())
            .await
            .map_err(|status| cli::explain(&status))?
            .into_inner()
            .rows;
        let mut table = Table::new(&[
            "item_code",
            "item_name",
            "packs",
            "units",
            "batches",
            "earliest_expiry",
        ]);
        for row in rows {
            table.push(vec![
                row.item_code.into(),
                row.item_name.into(),
                number(row.packs_on_hand),
                number(row.units_on_hand),
                row.batches.into(),
                row.earliest_expiry.into(),
            ]);
        }
        return Ok(table.render(args.format, false));
    }
    let status = pb::agent_service_client::AgentServiceClient::new(channel)
        .status(pb::AgentStatusRequest {})
        .await
        .map_err(|status| cli::explain(&status))?
        .into_inner();
    let state = match pb::ConnectionState::try_from(status.state) {
        Ok(pb::ConnectionState::Connected) => "connected",
        Ok(pb::ConnectionState::Connecting) => "connecting",
        Ok(pb::ConnectionState::Waiting) => "waiting (interval mode)",
        Ok(pb::ConnectionState::Disconnected) => "disconnected",
        _ => "unknown",
    };
    let mode = match pb::SyncMode::try_from(status.mode) {
        Ok(pb::SyncMode::Interval) => "interval",
        _ => "streaming",
    };
    let store = status.store.unwrap_or_default();
    let master = status
        .sync_with
        .first()
        .map(|p| p.url.clone())
        .unwrap_or_default();
    let mut table = Table::new(&[
        "sync_id",
        "store",
        "state",
        "mode",
        "master",
        "initialised",
        "init_progress",
        "upstream_backlog",
        "upstream_last_seq",
        "upstream_acked_seq",
        "downstream_cursor",
        "last_sync",
        "last_error_at",
        "last_error",
        "sync_interval_minutes",
        "agent_version",
    ]);
    table.push(vec![
        status.sync_id.into(),
        if store.code.is_empty() {
            "(not initialised)".into()
        } else {
            format!("{} ({})", store.code, store.name).into()
        },
        state.into(),
        mode.into(),
        master.into(),
        status.initialised.into(),
        if status.initialising {
            format!("{}/{}", status.init_records_done, status.init_records_total).into()
        } else {
            "".into()
        },
        status.upstream_backlog.into(),
        status.upstream_last_seq.into(),
        status.upstream_acked_seq.into(),
        status.downstream_cursor.into(),
        time_ms(status.last_sync_at_ms),
        time_ms(status.last_error_at_ms),
        status.last_error.into(),
        status.sync_interval_minutes.into(),
        status.agent_version.into(),
    ]);
    Ok(table.render(args.format, true))
}
