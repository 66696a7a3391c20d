//! `satellite-agent status`: the running satellite's sync state (and, when
//! asked, its store's stock on hand), read over gRPC as an operator would,
//! printed as a table, CSV or JSON.

use storesync_shared::kit::cli::{self, number, time_ms, ClientTls, Format, Table};
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
    /// Follow an initialisation or a catch-up (unsent changes draining) with
    /// a progress bar on stderr; print the sync state and exit once done.
    #[arg(long, conflicts_with = "stock")]
    pub watch: bool,
    #[command(flatten)]
    pub tls: ClientTls,
}

/// Asks the satellite at `url` and returns the text to print.
pub async fn status(
    url: &str,
    user: &str,
    password: &str,
    args: &StatusArgs,
) -> Result<String, String> {
    let channel = cli::connect_with(url, user, password, &args.tls).await?;
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
    let mut agent = pb::agent_service_client::AgentServiceClient::new(channel);
    let status = if args.watch {
        watch(&mut agent).await?
    } else {
        agent
            .status(pb::AgentStatusRequest {})
            .await
            .map_err(|status| cli::explain(&status))?
            .into_inner()
    };
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

/// What `--watch` follows: an initialisation, or unsent changes draining.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Initialising,
    Sending,
}

impl Phase {
    /// The phase `status` is in, with records done and in all; `None`: done.
    fn of(status: &pb::AgentStatus, most_unsent: u64) -> Option<(Self, u64, u64)> {
        if !status.initialised || status.initialising {
            Some((
                Self::Initialising,
                status.init_records_done,
                status.init_records_total,
            ))
        } else if status.upstream_backlog > 0 {
            let all = most_unsent.max(status.upstream_backlog);
            Some((Self::Sending, all - status.upstream_backlog, all))
        } else {
            None
        }
    }
}

/// Polls the agent each second, drawing progress on stderr, until it is
/// initialised with nothing left to send; returns that last status.
async fn watch(
    agent: &mut pb::agent_service_client::AgentServiceClient<cli::OperatorChannel>,
) -> Result<pb::AgentStatus, String> {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let mut most_unsent = 0u64;
    // Where the current phase started: (phase, records done, when).
    let mut start: Option<(Phase, u64, std::time::Instant)> = None;
    loop {
        let status = agent
            .status(pb::AgentStatusRequest {})
            .await
            .map_err(|status| cli::explain(&status))?
            .into_inner();
        most_unsent = most_unsent.max(status.upstream_backlog);
        let Some((phase, done, all)) = Phase::of(&status, most_unsent) else {
            if terminal {
                eprintln!();
            }
            return Ok(status);
        };
        let (_, done_at_start, since) = match start {
            Some(started) if started.0 == phase => started,
            _ => *start.insert((phase, done, std::time::Instant::now())),
        };
        let line = progress_line(
            phase,
            done,
            all,
            done.saturating_sub(done_at_start),
            since.elapsed(),
            &status.last_error,
        );
        if terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// One line of progress: a bar, the records, the rate and the time left.
fn progress_line(
    phase: Phase,
    done: u64,
    all: u64,
    moved: u64,
    elapsed: std::time::Duration,
    last_error: &str,
) -> String {
    const WIDTH: u64 = 30;
    let what = match phase {
        Phase::Initialising => "initialising",
        Phase::Sending => "sending",
    };
    let filled = (done.min(all) * WIDTH).checked_div(all).unwrap_or(0);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    let rate = if elapsed.as_secs_f64() >= 1.0 {
        moved as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    let left = match all.saturating_sub(done) {
        0 => String::new(),
        _ if rate <= 0.0 => ", time left unknown".to_owned(),
        remaining => format!(", {:.0} s left", remaining as f64 / rate),
    };
    let waiting = if all == 0 {
        " (waiting for the master's snapshot)"
    } else {
        ""
    };
    let error = if last_error.is_empty() {
        String::new()
    } else {
        format!(" | last error: {last_error}")
    };
    format!("{what} [{bar}] {done}/{all} records, {rate:.0} records/s{left}{waiting}{error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_the_share_done_the_rate_and_the_time_left() {
        let line = progress_line(
            Phase::Initialising,
            500,
            1000,
            500,
            std::time::Duration::from_secs(5),
            "",
        );
        assert_eq!(
            line,
            "initialising [###############---------------] 500/1000 records, 100 records/s, 5 s left"
        );
        let waiting = progress_line(Phase::Initialising, 0, 0, 0, std::time::Duration::ZERO, "");
        assert!(waiting.contains("waiting for the master"), "{waiting}");
    }

    #[test]
    fn done_means_initialised_with_nothing_to_send() {
        let mut status = pb::AgentStatus {
            initialised: true,
            ..Default::default()
        };
        assert_eq!(Phase::of(&status, 0), None);
        status.upstream_backlog = 3;
        assert_eq!(Phase::of(&status, 10), Some((Phase::Sending, 7, 10)));
        status.initialising = true;
        status.init_records_done = 4;
        status.init_records_total = 8;
        assert_eq!(Phase::of(&status, 10), Some((Phase::Initialising, 4, 8)));
    }
}
