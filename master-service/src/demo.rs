//! `master-service demo`: a master and two satellites as separate processes on
//! the embedded SQLite default, seeded with a realistic data set, for a new
//! user to try the reports, the CLI and grpcurl against.
//!
//! The demo is only an orchestrator: it starts `master-service serve` (this
//! executable) and the sibling `satellite-agent` binary, and does everything
//! else through their public gRPC APIs, as an operator would. Children run in
//! their own process group so that Ctrl-C reaches the demo only; the demo then
//! sends each child SIGTERM (satellites first) and waits for it to drain.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use storesync_shared::kit::cli::{self, ClientTls, Format, OperatorChannel};
use storesync_shared::proto::v1 as pb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::Report;

/// The essential-medicines list (WHO Model List), embedded: the demo reads no
/// files outside its own directory.
const MEDICINES_CSV: &str = include_str!("../data/essential-medicines.csv");

/// Credentials of the demo, the same as the README's examples.
pub const OPERATOR_USER: &str = "admin";
pub const OPERATOR_PASSWORD: &str = "operator-pass";
pub const AUTHORISATION_CODE: &str = "unlock-1234";
const SYNC_USER: &str = "sync";
const SYNC_PASSWORD: &str = "sync-pass-1";
/// Marks a directory the demo made, so a re-run may clear it (and nothing else).
const MARKER: &str = ".storesync-demo";
/// How long any one step may take before the demo gives up.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// `master-service demo` options.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's databases and logs (cleared on each run).
    #[arg(long, default_value = "storesync-demo")]
    pub dir: PathBuf,
    /// Master's port; the satellites take the next two. 0: any free ports.
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    /// How many essential medicines become items (at most 714).
    #[arg(long, default_value_t = 300)]
    pub items: usize,
}

/// One satellite of the demo.
struct SiteSpec {
    sync_id: u32,
    site_name: &'static str,
    store_code: &'static str,
    store_name: &'static str,
}

const SITES: [SiteSpec; 2] = [
    SiteSpec {
        sync_id: 2,
        site_name: "Riverside clinic",
        store_code: "CLINIC2",
        store_name: "Riverside clinic store",
    },
    SiteSpec {
        sync_id: 3,
        site_name: "Hillside health centre",
        store_code: "CLINIC3",
        store_name: "Hillside health centre store",
    },
];

/// A child process and what the demo knows of it.
struct Running {
    label: String,
    child: Child,
    addr: String,
}

/// Runs the demo until SIGINT or SIGTERM.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let bin_dir = exe
        .parent()
        .ok_or("this executable has no directory")?
        .to_path_buf();
    let satellite_bin = bin_dir.join(format!("satellite-agent{}", std::env::consts::EXE_SUFFIX));
    if !satellite_bin.exists() {
        return Err(format!(
            "{} is not built; build it beside this one first:\n  cargo build --release -p satellite-agent   \
             (or `cargo build -p satellite-agent` for a debug build)",
            satellite_bin.display()
        ));
    }
    prepare_dir(&args.dir)?;
    let mut children: Vec<Running> = Vec::new();
    let result = run_with(&args, &exe, &satellite_bin, &mut children).await;
    // Whatever happened, stop every child cleanly, satellites first.
    for running in children.iter_mut().rev() {
        stop(running).await;
    }
    if result.is_ok() {
        println!("demo stopped; its data stays in {}", args.dir.display());
    }
    result
}

async fn run_with(
    args: &DemoArgs,
    exe: &Path,
    satellite_bin: &Path,
    children: &mut Vec<Running>,
) -> Result<(), String> {
    let port = |offset: u16| {
        if args.port == 0 {
            0
        } else {
            args.port.saturating_add(offset)
        }
    };
    println!(
        "Starting the master (logs: {}) …",
        args.dir.join("master.log").display()
    );
    let master = spawn(
        "master",
        exe,
        &["serve"],
        &[
            ("STORESYNC_LISTEN", format!("127.0.0.1:{}", port(0))),
            ("STORESYNC_DATA_DIR", dir_of(&args.dir, "master")?),
            ("STORESYNC_OPERATOR_USER", OPERATOR_USER.into()),
            ("STORESYNC_OPERATOR_PASSWORD", OPERATOR_PASSWORD.into()),
            ("STORESYNC_AUTHORISATION_CODE", AUTHORISATION_CODE.into()),
            ("STORESYNC_SYNC_USER", SYNC_USER.into()),
            ("STORESYNC_SYNC_PASSWORD", SYNC_PASSWORD.into()),
            ("STORESYNC_SYNC_INTERVAL_MINUTES", "1".into()),
            ("STORESYNC_HEARTBEAT_SECONDS", "5".into()),
            ("STORESYNC_SHUTDOWN_GRACE_SECONDS", "5".into()),
            ("STORESYNC_MASTER_STORE_CODE", "CENTRAL".into()),
            (
                "STORESYNC_MASTER_STORE_NAME",
                "Central medical store".into(),
            ),
        ],
        &args.dir.join("master.log"),
    )
    .await?;
    let master_url = format!("http://{}", master.addr);
    children.push(master);
    let channel = cli::connect(&master_url, OPERATOR_USER, OPERATOR_PASSWORD).await?;
    let bad = |what: &'static str| {
        move |status: tonic::Status| format!("{what}: {}", cli::explain(&status))
    };

    // The "sync with" list: unlock with the authorisation code, add two sites.
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel.clone());
    let token = admin
        .unlock(pb::UnlockRequest {
            authorisation_code: AUTHORISATION_CODE.into(),
        })
        .await
        .map_err(bad("unlocking the sync preferences"))?
        .into_inner()
        .token;
    for (n, site) in SITES.iter().enumerate() {
        let mut request = tonic::Request::new(pb::AddSiteRequest {
            site: Some(pb::Site {
                sync_id: site.sync_id,
                name: site.site_name.into(),
                store: Some(pb::Store {
                    id: String::new(),
                    code: site.store_code.into(),
                    name: site.store_name.into(),
                    sync_id: site.sync_id,
                }),
                url: format!("http://127.0.0.1:{}", port(1 + n as u16)),
                enabled: true,
                ..Default::default()
            }),
        });
        let token = token
            .parse()
            .map_err(|_| "the unlock token is not a header value".to_owned())?;
        request.metadata_mut().insert("x-unlock-token", token);
        admin
            .add_site(request)
            .await
            .map_err(bad("adding a site"))?;
    }

    // Master data: essential medicines, suppliers and customers.
    let medicines = medicines(args.items);
    println!(
        "Creating {} essential medicines, 3 suppliers and 3 customers on the master …",
        medicines.len()
    );
    let mut master_data =
        pb::master_data_service_client::MasterDataServiceClient::new(channel.clone());
    let mut items = Vec::with_capacity(medicines.len());
    for item in medicines {
        let stored = master_data
            .upsert_item(pb::UpsertItemRequest { item: Some(item) })
            .await
            .map_err(bad("creating an item"))?;
        items.push(stored.into_inner().item.ok_or("no item in the answer")?);
    }
    let mut suppliers = Vec::new();
    let mut customers = Vec::new();
    for (code, name, supplier) in [
        ("CMSL", "Central Medical Stores Ltd", true),
        ("IDAF", "IDA Foundation", true),
        ("MEDS", "Mission for Essential Drugs and Supplies", true),
        ("OPD", "Outpatients department", false),
        ("MATWARD", "Maternity ward", false),
        ("CHW-ROSA", "Rosa Mwangi, community health worker", false),
    ] {
        let stored = master_data
            .upsert_name(pb::UpsertNameRequest {
                name: Some(pb::Name {
                    code: code.into(),
                    name: name.into(),
                    is_supplier: supplier,
                    is_customer: !supplier,
                    active: true,
                    ..Default::default()
                }),
            })
            .await
            .map_err(bad("creating a name"))?
            .into_inner()
            .name
            .ok_or("no name in the answer")?;
        if supplier {
            suppliers.push(stored);
        } else {
            customers.push(stored);
        }
    }

    // The satellites: each initialises from the master; watch the items arrive.
    let mut satellite_urls = Vec::new();
    for (n, site) in SITES.iter().enumerate() {
        let label = format!("site{}", site.sync_id);
        println!("Starting satellite {} ({}) …", site.sync_id, site.site_name);
        let running = spawn(
            &label,
            satellite_bin,
            &[],
            &[
                (
                    "STORESYNC_LISTEN",
                    format!("127.0.0.1:{}", port(1 + n as u16)),
                ),
                ("STORESYNC_MASTER_URL", master_url.clone()),
                ("STORESYNC_SYNC_ID", site.sync_id.to_string()),
                ("STORESYNC_SYNC_USER", SYNC_USER.into()),
                ("STORESYNC_SYNC_PASSWORD", SYNC_PASSWORD.into()),
                ("STORESYNC_DATA_DIR", dir_of(&args.dir, &label)?),
                ("STORESYNC_OPERATOR_USER", OPERATOR_USER.into()),
                ("STORESYNC_OPERATOR_PASSWORD", OPERATOR_PASSWORD.into()),
                ("STORESYNC_AUTHORISATION_CODE", AUTHORISATION_CODE.into()),
                ("STORESYNC_HEARTBEAT_SECONDS", "5".into()),
                ("STORESYNC_SHUTDOWN_GRACE_SECONDS", "5".into()),
            ],
            &args.dir.join(format!("{label}.log")),
        )
        .await?;
        satellite_urls.push(format!("http://{}", running.addr));
        children.push(running);
    }
    for (site, url) in SITES.iter().zip(&satellite_urls) {
        let channel = cli::connect(url, OPERATOR_USER, OPERATOR_PASSWORD).await?;
        wait_initialised(site, channel, items.len()).await?;
    }

    // Trade: goods in at every store, then some dispensing; watch it come back.
    let mut stores: Vec<(String, String)> = vec![("CENTRAL".into(), master_url.clone())];
    for (site, url) in SITES.iter().zip(&satellite_urls) {
        stores.push((site.store_code.into(), url.clone()));
    }
    for (n, (code, url)) in stores.iter().enumerate() {
        let channel = cli::connect(url, OPERATOR_USER, OPERATOR_PASSWORD).await?;
        let invoices = trade(channel, n, &items, &suppliers, &customers).await?;
        println!("  {code}: {invoices} invoices written at the site");
    }
    println!("Waiting for the satellites' invoices to reach the master …");
    for (site, url) in SITES.iter().zip(&satellite_urls) {
        let channel = cli::connect(url, OPERATOR_USER, OPERATOR_PASSWORD).await?;
        wait_drained(site, channel).await?;
    }
    // Stock between stores: the warehouse supplies CLINIC2, CLINIC3
    // requisitions from CLINIC2, which supplies part of it.
    moves(&master_url, &satellite_urls).await?;
    for (site, url) in SITES.iter().zip(&satellite_urls) {
        let channel = cli::connect(url, OPERATOR_USER, OPERATOR_PASSWORD).await?;
        wait_drained(site, channel).await?;
    }
    for report in [
        Report::StockInTransit {
            store_ids: Vec::new(),
        },
        Report::OpenRequisitions {
            store_ids: Vec::new(),
        },
        Report::ReceiptDiscrepancies {
            store_ids: Vec::new(),
        },
    ] {
        let title = match &report {
            Report::StockInTransit { .. } => "Stock in transit",
            Report::OpenRequisitions { .. } => "Open requisitions",
            _ => "Receipt discrepancies",
        };
        let table = crate::cli::run_report(
            &master_url,
            OPERATOR_USER,
            OPERATOR_PASSWORD,
            report,
            Format::Table,
            &ClientTls::default(),
        )
        .await?;
        println!("\n{title}, as the master reports it:\n\n{table}");
    }
    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    let activity = crate::cli::run_report(
        &master_url,
        OPERATOR_USER,
        OPERATOR_PASSWORD,
        Report::StoreActivity {
            from: today.clone(),
            to: today,
            store_ids: Vec::new(),
            per_day: false,
        },
        Format::Table,
        &ClientTls::default(),
    )
    .await?;
    println!("\nToday's activity of every store, as the master reports it:\n\n{activity}");
    let status = crate::cli::run_report(
        &master_url,
        OPERATOR_USER,
        OPERATOR_PASSWORD,
        Report::SyncStatus,
        Format::Table,
        &ClientTls::default(),
    )
    .await?;
    println!("Sync status:\n\n{status}");
    print_guide(&master_url, &satellite_urls);
    println!("demo ready: press Ctrl-C to stop the master and both satellites");

    // Run until Ctrl-C / SIGTERM, or until a child dies on its own.
    tokio::select! {
        () = storesync_shared::kit::server::shutdown_signal() => {
            println!("\nstopping …");
            Ok(())
        }
        exited = first_exit(children) => Err(exited),
    }
}

/// Resolves when any child exits, naming it.
async fn first_exit(children: &mut [Running]) -> String {
    loop {
        for running in children.iter_mut() {
            if let Ok(Some(status)) = running.child.try_wait() {
                return format!(
                    "{} exited on its own ({status}); see its log in the demo directory",
                    running.label
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts `bin` in its own process group with only `env` of the STORESYNC_*
/// settings, stderr to `log`, and waits for its `listening on <addr>` line.
async fn spawn(
    label: &str,
    bin: &Path,
    args: &[&str],
    env: &[(&str, String)],
    log: &Path,
) -> Result<Running, String> {
    let log_file =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut command = Command::new(bin);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .env("RUST_LOG", "info");
    for (key, _) in std::env::vars() {
        if key.starts_with("STORESYNC_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout of the child")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stdout).lines();
        // Keep reading after the address so the child never blocks on a full pipe.
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.split("listening on ").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        }
    });
    let mut running = Running {
        label: label.to_owned(),
        child,
        addr: String::new(),
    };
    match tokio::time::timeout(STEP_LIMIT, rx).await {
        Ok(Ok(addr)) => {
            running.addr = addr;
            Ok(running)
        }
        _ => {
            stop(&mut running).await;
            Err(format!(
                "{label} did not start; see {} (is the port in use? try --port)",
                log.display()
            ))
        }
    }
}

/// SIGTERM, up to 15 s to drain, then SIGKILL.
async fn stop(running: &mut Running) {
    if let Ok(Some(_)) = running.child.try_wait() {
        return;
    }
    if let Some(pid) = running.child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(15), running.child.wait()).await {
        Ok(_) => println!("  {} stopped", running.label),
        Err(_) => {
            let _ = running.child.kill().await;
            println!(
                "  {} did not stop within 15 s and was killed",
                running.label
            );
        }
    }
}

/// Creates the demo directory, or clears one an earlier demo made.
fn prepare_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        let is_demo = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !is_demo && !empty {
            return Err(format!(
                "{} exists and was not made by the demo; choose another --dir",
                dir.display()
            ));
        }
        if is_demo {
            std::fs::remove_dir_all(dir)
                .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `master-service demo`; cleared on its next run\n",
    )
    .map_err(|e| format!("cannot write in {}: {e}", dir.display()))
}

/// `dir/name`, created, as text for an environment variable.
fn dir_of(dir: &Path, name: &str) -> Result<String, String> {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

/// The first `count` medicines of the embedded list, as items.
fn medicines(count: usize) -> Vec<pb::Item> {
    MEDICINES_CSV
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields = split_csv(line);
            let pack_size = fields.get(5)?.parse().ok()?;
            Some(pb::Item {
                code: fields.first()?.clone(),
                name: fields.get(1)?.clone(),
                unit: fields.get(4)?.clone(),
                default_pack_size: pack_size,
                active: true,
                ..Default::default()
            })
        })
        .take(count)
        .collect()
}

/// One CSV line's fields (double-quoted fields may hold commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match (c, quoted) {
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields
}

async fn wait_initialised(
    site: &SiteSpec,
    channel: OperatorChannel,
    items: usize,
) -> Result<(), String> {
    let mut agent = pb::agent_service_client::AgentServiceClient::new(channel);
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    let mut shown = u64::MAX;
    while tokio::time::Instant::now() < deadline {
        if let Ok(status) = agent.status(pb::AgentStatusRequest {}).await {
            let status = status.into_inner();
            if status.initialised {
                println!(
                    "  site {} ({}): initialised: {items} items, 6 names and 3 stores arrived from the master",
                    site.sync_id, site.site_name
                );
                return Ok(());
            }
            if status.initialising && status.init_records_done != shown {
                shown = status.init_records_done;
                println!(
                    "  site {}: receiving {}/{} records …",
                    site.sync_id, status.init_records_done, status.init_records_total
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "site {} did not initialise within {STEP_LIMIT:?}",
        site.sync_id
    ))
}

async fn wait_drained(site: &SiteSpec, channel: OperatorChannel) -> Result<(), String> {
    let mut agent = pb::agent_service_client::AgentServiceClient::new(channel);
    let deadline = tokio::time::Instant::now() + STEP_LIMIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(status) = agent.status(pb::AgentStatusRequest {}).await {
            let status = status.into_inner();
            if status.upstream_backlog == 0 {
                println!(
                    "  site {}: all {} records acknowledged by the master",
                    site.sync_id, status.upstream_acked_seq
                );
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "site {} did not sync within {STEP_LIMIT:?}",
        site.sync_id
    ))
}

/// A few invoices at the store behind `channel` (the `n`th store): two
/// deliveries from suppliers, then dispensing to customers. Returns how many.
async fn trade(
    channel: OperatorChannel,
    n: usize,
    items: &[pb::Item],
    suppliers: &[pb::Name],
    customers: &[pb::Name],
) -> Result<usize, String> {
    let mut store = pb::store_service_client::StoreServiceClient::new(channel);
    let bad = |status: tonic::Status| format!("writing an invoice: {}", cli::explain(&status));
    let today = chrono::Utc::now().date_naive();
    let mut written = 0;
    let mut received = Vec::new();
    for delivery in 0..2 {
        // Different items at each store, some batches expiring within months.
        let lines = (0..8)
            .filter_map(|k| {
                let item = items.get((n * 17 + delivery * 8 + k) % items.len().max(1))?;
                let months = [2, 5, 11, 18, 24, 30, 36, 3][k % 8];
                Some(pb::InvoiceLine {
                    item_id: item.id.clone(),
                    batch: format!("B{}{:02}{}", 24 + delivery, k + 1, n),
                    expiry_date: (today + chrono::Duration::days(30 * months))
                        .format("%Y-%m-%d")
                        .to_string(),
                    pack_size: item.default_pack_size,
                    number_of_packs: (10 + 5 * k + 3 * n) as f64,
                    cost_price_per_pack: 1.25 + k as f64 * 0.8,
                    ..Default::default()
                })
            })
            .collect();
        let answer = store
            .create_invoice(pb::CreateInvoiceRequest {
                invoice: Some(pb::Invoice {
                    kind: pb::InvoiceKind::SupplierInvoice as i32,
                    name_id: suppliers[(n + delivery) % suppliers.len()].id.clone(),
                    reference: format!("DN-{}{:03}", n + 1, delivery + 1),
                    lines,
                    ..Default::default()
                }),
            })
            .await
            .map_err(bad)?
            .into_inner();
        received.extend(answer.stock_lines);
        written += 1;
    }
    for (k, customer) in customers.iter().enumerate() {
        let lines = received
            .iter()
            .skip(k * 3)
            .take(3)
            .map(|line| pb::InvoiceLine {
                item_id: line.item_id.clone(),
                stock_line_id: line.id.clone(),
                pack_size: line.pack_size,
                number_of_packs: 2.0 + k as f64,
                sell_price_per_pack: line.cost_price_per_pack * 1.3,
                ..Default::default()
            })
            .collect::<Vec<_>>();
        if lines.is_empty() {
            continue;
        }
        store
            .create_invoice(pb::CreateInvoiceRequest {
                invoice: Some(pb::Invoice {
                    kind: pb::InvoiceKind::CustomerInvoice as i32,
                    name_id: customer.id.clone(),
                    reference: format!("RX-{}{:03}", n + 1, k + 1),
                    lines,
                    ..Default::default()
                }),
            })
            .await
            .map_err(bad)?;
        written += 1;
    }
    Ok(written)
}

/// Polls `probe` every half second until it answers, for at most [`STEP_LIMIT`].
async fn until<T, F, Fut>(what: &str, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        if started.elapsed() > STEP_LIMIT {
            return Err(format!("{what} did not happen within {STEP_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The warehouse (CENTRAL, the master's own store) ships to CLINIC2, which
/// receives it one pack short; CLINIC3 requisitions two items from CLINIC2,
/// which ships part of the first against the response (left in transit).
async fn moves(master_url: &str, satellite_urls: &[String]) -> Result<(), String> {
    let bad = |what: &'static str| {
        move |status: tonic::Status| format!("{what}: {}", cli::explain(&status))
    };
    let connect = |url: String| async move {
        cli::connect(&url, OPERATOR_USER, OPERATOR_PASSWORD)
            .await
            .map(pb::store_service_client::StoreServiceClient::new)
    };
    let names = pb::master_data_service_client::MasterDataServiceClient::new(
        cli::connect(master_url, OPERATOR_USER, OPERATOR_PASSWORD).await?,
    );
    let store_id = |code: &'static str| {
        let mut names = names.clone();
        async move {
            names
                .list_names(pb::ListNamesRequest {
                    code_prefix: code.into(),
                    page_size: 1,
                    ..Default::default()
                })
                .await
                .map_err(bad("finding a store"))?
                .into_inner()
                .names
                .into_iter()
                .next()
                .map(|name| name.id)
                .ok_or_else(|| format!("no store {code}"))
        }
    };
    let clinic2 = store_id("CLINIC2").await?;
    let clinic3 = store_id("CLINIC3").await?;
    let mut central = connect(master_url.to_owned()).await?;
    let mut site2 = connect(satellite_urls[0].clone()).await?;
    let mut site3 = connect(satellite_urls[1].clone()).await?;
    let stock_of = |store: &mut pb::store_service_client::StoreServiceClient<OperatorChannel>| {
        let mut store = store.clone();
        async move {
            Ok::<_, String>(
                store
                    .list_stock(pb::ListStockRequest {
                        page_size: 20,
                        ..Default::default()
                    })
                    .await
                    .map_err(bad("listing stock"))?
                    .into_inner()
                    .stock_lines
                    .into_iter()
                    .filter(|line| line.available_number_of_packs >= 5.0)
                    .collect::<Vec<_>>(),
            )
        }
    };

    // The warehouse supplies CLINIC2: a draft reserves, shipping takes.
    let warehouse_stock = stock_of(&mut central).await?;
    let line = warehouse_stock.first().ok_or("no stock at the warehouse")?;
    let outbound = central
        .create_transfer(pb::CreateTransferRequest {
            to_store_id: clinic2.clone(),
            reference: "WH-TO-CLINIC2".into(),
            lines: vec![pb::InvoiceLine {
                stock_line_id: line.id.clone(),
                number_of_packs: 5.0,
                sell_price_per_pack: line.cost_price_per_pack * 1.1,
                ..Default::default()
            }],
            requisition_id: String::new(),
        })
        .await
        .map_err(bad("creating a transfer"))?
        .into_inner();
    central
        .ship_transfer(pb::ShipTransferRequest {
            id: outbound.id.clone(),
        })
        .await
        .map_err(bad("shipping a transfer"))?;
    println!(
        "  CENTRAL shipped 5 packs to CLINIC2 (outbound {})",
        outbound.id
    );
    let inbound = until("CLINIC2's inbound shipment", || {
        let mut site2 = site2.clone();
        let outbound_id = outbound.id.clone();
        async move {
            Ok(site2
                .list_transfers(pb::ListTransfersRequest {
                    direction: pb::TransferDirection::Inbound as i32,
                    status: pb::InvoiceStatus::Shipped as i32,
                    ..Default::default()
                })
                .await
                .map_err(bad("listing transfers"))?
                .into_inner()
                .transfers
                .into_iter()
                .filter_map(|entry| entry.invoice)
                .find(|invoice| invoice.linked_invoice_id == outbound_id))
        }
    })
    .await?;
    let full = site2
        .get_invoice(pb::GetInvoiceRequest {
            id: inbound.id.clone(),
        })
        .await
        .map_err(bad("reading the inbound shipment"))?
        .into_inner();
    site2
        .receive_transfer(pb::ReceiveTransferRequest {
            id: inbound.id.clone(),
            lines: full
                .lines
                .iter()
                .map(|line| pb::ReceivedLine {
                    line_id: line.id.clone(),
                    received_number_of_packs: line.number_of_packs - 1.0,
                })
                .collect(),
        })
        .await
        .map_err(bad("receiving a transfer"))?;
    println!("  CLINIC2 received it, one pack short");

    // CLINIC3 requisitions two of CLINIC2's items.
    let clinic2_stock = stock_of(&mut site2).await?;
    let wanted: Vec<&pb::StockLine> = clinic2_stock.iter().take(2).collect();
    if wanted.is_empty() {
        return Err("no stock at CLINIC2".into());
    }
    let request = site3
        .create_requisition(pb::CreateRequisitionRequest {
            supplier_store_id: clinic2.clone(),
            reference: "MONTHLY".into(),
            lines: wanted
                .iter()
                .map(|line| pb::RequisitionLineInput {
                    item_id: line.item_id.clone(),
                    requested_quantity: 10.0 * f64::from(line.pack_size),
                })
                .collect(),
        })
        .await
        .map_err(bad("creating a requisition"))?
        .into_inner();
    site3
        .send_requisition(pb::SendRequisitionRequest {
            id: request.id.clone(),
        })
        .await
        .map_err(bad("sending a requisition"))?;
    println!(
        "  CLINIC3 sent requisition {} to CLINIC2 ({} lines)",
        request.requisition_number,
        request.lines.len()
    );
    let response = until("CLINIC2's response requisition", || {
        let mut site2 = site2.clone();
        let request_id = request.id.clone();
        async move {
            Ok(site2
                .list_requisitions(pb::ListRequisitionsRequest {
                    kind: pb::RequisitionKind::Response as i32,
                    ..Default::default()
                })
                .await
                .map_err(bad("listing requisitions"))?
                .into_inner()
                .requisitions
                .into_iter()
                .find(|r| r.linked_requisition_id == request_id))
        }
    })
    .await?;
    let supply = site2
        .create_transfer(pb::CreateTransferRequest {
            to_store_id: clinic3.clone(),
            reference: "REQ-SUPPLY".into(),
            lines: vec![pb::InvoiceLine {
                stock_line_id: wanted[0].id.clone(),
                number_of_packs: 3.0,
                sell_price_per_pack: wanted[0].cost_price_per_pack * 1.1,
                ..Default::default()
            }],
            requisition_id: response.id.clone(),
        })
        .await
        .map_err(bad("supplying a requisition"))?
        .into_inner();
    site2
        .ship_transfer(pb::ShipTransferRequest {
            id: supply.id.clone(),
        })
        .await
        .map_err(bad("shipping a transfer"))?;
    println!("  CLINIC2 shipped 3 packs against it; CLINIC3 has not received them yet");
    Ok(())
}

fn print_guide(master_url: &str, satellite_urls: &[String]) {
    let host = |url: &str| url.trim_start_matches("http://").to_owned();
    let master = host(master_url);
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "master-service".into());
    println!("The demo network is up:");
    println!("  master      {master}   (store CENTRAL, Sync ID 1)");
    for (site, url) in SITES.iter().zip(satellite_urls) {
        println!(
            "  satellite   {}   (store {}, Sync ID {}, {})",
            host(url),
            site.store_code,
            site.sync_id,
            site.site_name
        );
    }
    println!("  operator    {OPERATOR_USER} / {OPERATOR_PASSWORD}; authorisation code {AUTHORISATION_CODE}; sync user {SYNC_USER} / {SYNC_PASSWORD}");
    println!();
    println!("Try the reports from another terminal:");
    println!("  export STORESYNC_OPERATOR_PASSWORD={OPERATOR_PASSWORD}");
    for report in [
        "stock-on-hand",
        "store-activity --per-day",
        "expiring-stock",
        "sync-status",
    ] {
        println!("  {exe} report {report} --address {master}");
    }
    println!("  {exe} report stock-on-hand --address {master} --format csv");
    if let Some(url) = satellite_urls.first() {
        let satellite_exe = std::path::Path::new(&exe)
            .with_file_name(format!("satellite-agent{}", std::env::consts::EXE_SUFFIX));
        println!(
            "  {} status --address {}",
            satellite_exe.display(),
            host(url)
        );
    }
    println!();
    println!("or with grpcurl:");
    println!(
        "  AUTH=\"authorization: Basic $(printf '{OPERATOR_USER}:{OPERATOR_PASSWORD}' | base64)\""
    );
    println!("  grpcurl -plaintext -H \"$AUTH\" -d '{{\"item_code_prefix\": \"AMOX\"}}' {master} storesync.v1.ReportService/StockOnHand");
    println!("  grpcurl -plaintext -H \"$AUTH\" -d '{{\"per_day\": true}}' {master} storesync.v1.ReportService/StoreActivity");
    println!("  grpcurl -plaintext -H \"$AUTH\" -d '{{\"before\": \"2027-01-01\"}}' {master} storesync.v1.ReportService/ExpiringStock");
    println!("  grpcurl -plaintext -H \"$AUTH\" {master} storesync.v1.ReportService/SyncStatus");
    if let Some(url) = satellite_urls.first() {
        let satellite = host(url);
        println!(
            "  grpcurl -plaintext -H \"$AUTH\" {satellite} storesync.v1.StoreService/StockOnHand"
        );
        println!("  grpcurl -plaintext -H \"$AUTH\" {satellite} storesync.v1.AgentService/Status");
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_list_gives_hundreds_of_items() {
        let items = medicines(1000);
        assert!(items.len() > 700, "{} items", items.len());
        assert!(items
            .iter()
            .all(|i| !i.code.is_empty() && i.default_pack_size > 0));
        let quoted = items
            .iter()
            .find(|i| i.code == "DIDA25TBCD")
            .map(|i| i.unit.clone());
        assert_eq!(
            quoted.as_deref(),
            Some("tab"),
            "a quoted field with a comma"
        );
    }
}
