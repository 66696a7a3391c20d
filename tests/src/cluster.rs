//! A master and satellites as real processes, for the sync-stream scenarios.
//!
//! Every process gets fixed test credentials; satellites keep SQLite files of
//! their own; a restarted process keeps its database and its address.

use std::time::Duration;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use storesync_shared::domain::entities::{invoice, invoice_line, item, name, stock_line, store};
use storesync_shared::proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{bin_path, Backend, Process, TestDb};

pub const OPERATOR_USER: &str = "operator";
pub const OPERATOR_PASSWORD: &str = "operator-password-1";
pub const AUTHORISATION_CODE: &str = "unlock-code-0001";
pub const SYNC_USER: &str = "sync";
pub const SYNC_PASSWORD: &str = "sync-password-1";
/// Heartbeat used by test processes: short, so dead links are noticed quickly.
pub const HEARTBEAT_SECONDS: &str = "2";

/// Adds operator credentials to every call.
#[derive(Clone)]
pub struct BasicAuth(MetadataValue<Ascii>);

impl BasicAuth {
    pub fn new(user: &str, password: &str) -> Self {
        Self(
            storesync_shared::kit::auth::basic_header(user, password)
                .parse()
                .expect("header"),
        )
    }
}

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

/// A channel with operator credentials.
pub type Authed = InterceptedService<Channel, BasicAuth>;

async fn connect(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A running master.
pub struct Master {
    pub process: Process,
    env: Vec<(String, String)>,
    /// Set when the master serves TLS: how operator clients connect.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Master {
    /// Starts a master on `db` with the test credentials and shared sync password.
    pub fn start(db: &TestDb, extra: &[(&str, &str)]) -> Self {
        let mut vars = env(&[
            ("STORESYNC_LISTEN", "127.0.0.1:0"),
            ("STORESYNC_OPERATOR_USER", OPERATOR_USER),
            ("STORESYNC_OPERATOR_PASSWORD", OPERATOR_PASSWORD),
            ("STORESYNC_AUTHORISATION_CODE", AUTHORISATION_CODE),
            ("STORESYNC_SYNC_USER", SYNC_USER),
            ("STORESYNC_SYNC_PASSWORD", SYNC_PASSWORD),
            ("STORESYNC_SYNC_INTERVAL_MINUTES", "1"),
            ("STORESYNC_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS),
            ("STORESYNC_SHUTDOWN_GRACE_SECONDS", "5"),
        ]);
        vars.push(("STORESYNC_DATABASE_URL".into(), db.url()));
        vars.extend(env(extra));
        let process = Process::spawn(
            &bin_path("master-service", "STORESYNC_MASTER_BIN"),
            "master",
            &[],
            &vars,
        );
        Self {
            process,
            env: vars,
            tls: None,
        }
    }

    /// Starts a master that serves TLS (its `STORESYNC_TLS_*` in `extra`);
    /// operator clients of this handle connect with `client`.
    pub fn start_tls(
        db: &TestDb,
        extra: &[(&str, &str)],
        client: tonic::transport::ClientTlsConfig,
    ) -> Self {
        let mut master = Self::start(db, extra);
        master.tls = Some(client);
        master
    }

    /// Kills the master (SIGKILL) and starts it again on the same database and address.
    pub fn restart_after_kill(&mut self) {
        self.process.kill();
        self.start_again();
    }

    /// Starts the (stopped) master again on the same address.
    pub fn start_again(&mut self) {
        let addr = self.process.addr.to_string();
        let mut vars = self.env.clone();
        vars.retain(|(k, _)| k != "STORESYNC_LISTEN");
        vars.push(("STORESYNC_LISTEN".into(), addr.clone()));
        // The port was just released; give the kernel a moment if it is still busy.
        for attempt in 0..20 {
            let result = std::panic::catch_unwind(|| {
                Process::spawn(
                    &bin_path("master-service", "STORESYNC_MASTER_BIN"),
                    "master",
                    &[],
                    &vars,
                )
            });
            match result {
                Ok(process) => {
                    self.process = process;
                    return;
                }
                Err(_) if attempt < 19 => std::thread::sleep(Duration::from_millis(250)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.process.addr),
            None => self.process.url(),
        }
    }

    pub async fn channel(&self) -> Authed {
        let channel = match &self.tls {
            Some(tls) => tonic::transport::Endpoint::from_shared(self.url())
                .expect("endpoint")
                .tls_config(tls.clone())
                .expect("tls config")
                .connect()
                .await
                .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url())),
            None => connect(&self.url()).await,
        };
        InterceptedService::new(channel, BasicAuth::new(OPERATOR_USER, OPERATOR_PASSWORD))
    }

    pub async fn master_data(
        &self,
    ) -> pb::master_data_service_client::MasterDataServiceClient<Authed> {
        pb::master_data_service_client::MasterDataServiceClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> pb::admin_service_client::AdminServiceClient<Authed> {
        pb::admin_service_client::AdminServiceClient::new(self.channel().await)
    }

    pub async fn store(&self) -> pb::store_service_client::StoreServiceClient<Authed> {
        pb::store_service_client::StoreServiceClient::new(self.channel().await)
    }

    pub async fn reports(&self) -> pb::report_service_client::ReportServiceClient<Authed> {
        pb::report_service_client::ReportServiceClient::new(self.channel().await)
    }

    /// An unlock token from the authorisation code.
    pub async fn unlock(&self) -> String {
        self.admin()
            .await
            .unlock(pb::UnlockRequest {
                authorisation_code: AUTHORISATION_CODE.into(),
            })
            .await
            .expect("unlock")
            .into_inner()
            .token
    }

    /// Adds satellite `sync_id` hosting store `S<sync_id>`; returns the site.
    pub async fn add_site(&self, sync_id: u32) -> pb::Site {
        let token = self.unlock().await;
        let mut request = tonic::Request::new(pb::AddSiteRequest {
            site: Some(pb::Site {
                sync_id,
                name: format!("Site {sync_id}"),
                store: Some(pb::Store {
                    id: String::new(),
                    code: format!("S{sync_id}"),
                    name: format!("Store {sync_id}"),
                    sync_id,
                }),
                url: format!("http://127.0.0.1:{}", 50000 + sync_id),
                enabled: true,
                ..Default::default()
            }),
        });
        request
            .metadata_mut()
            .insert("x-unlock-token", token.parse().expect("token header"));
        self.admin()
            .await
            .add_site(request)
            .await
            .expect("add site")
            .into_inner()
            .site
            .expect("site")
    }
}

impl Master {
    /// Adopts satellite database `database_id` for `sync_id`, as an operator would.
    pub async fn adopt(&self, sync_id: u32, database_id: &str) -> pb::AdoptDatabaseResponse {
        let token = self.unlock().await;
        let mut request = tonic::Request::new(pb::AdoptDatabaseRequest {
            sync_id,
            database_id: database_id.to_owned(),
        });
        request
            .metadata_mut()
            .insert("x-unlock-token", token.parse().expect("token header"));
        self.admin()
            .await
            .adopt_database(request)
            .await
            .expect("adopt database")
            .into_inner()
    }
}

impl Master {
    /// UpdateSite as an operator does it (fields left empty keep their value).
    pub async fn update_site(&self, site: pb::Site) -> Result<pb::Site, tonic::Status> {
        let token = self.unlock().await;
        let mut request = tonic::Request::new(pb::UpdateSiteRequest {
            site: Some(site),
            clear_own_credentials: false,
        });
        request
            .metadata_mut()
            .insert("x-unlock-token", token.parse().expect("token header"));
        let response = self.admin().await.update_site(request).await?;
        Ok(response.into_inner().site.unwrap_or_default())
    }

    /// RemoveSite as an operator does it.
    pub async fn remove_site(&self, sync_id: u32) -> Result<(), tonic::Status> {
        let token = self.unlock().await;
        let mut request = tonic::Request::new(pb::RemoveSiteRequest { sync_id });
        request
            .metadata_mut()
            .insert("x-unlock-token", token.parse().expect("token header"));
        self.admin().await.remove_site(request).await?;
        Ok(())
    }
}

/// The identity of a satellite's database (`sync_state.database_id`), read from its file.
pub async fn database_id(db: &TestDb) -> String {
    use sea_orm::{ConnectionTrait, Statement};
    let conn = db.connect().await;
    let row = conn
        .query_one(Statement::from_string(
            conn.get_database_backend(),
            "SELECT database_id FROM sync_state WHERE id = 1",
        ))
        .await
        .expect("read sync_state")
        .expect("the sync_state row");
    row.try_get_by_index(0).expect("database_id")
}

/// A running satellite with its own SQLite database.
pub struct Satellite {
    pub process: Process,
    pub db: TestDb,
    pub sync_id: u32,
    env: Vec<(String, String)>,
}

/// Starts the satellite-agent binary for `sync_id` with `vars`.
fn spawn_satellite(sync_id: u32, vars: &[(String, String)]) -> Process {
    Process::spawn(
        &bin_path("satellite-agent", "STORESYNC_SATELLITE_BIN"),
        &format!("satellite-{sync_id}"),
        &[],
        vars,
    )
}

impl Satellite {
    /// Starts satellite `sync_id` syncing with `master_url` in `mode` ("streaming" or "interval").
    pub fn start(master_url: &str, sync_id: u32, mode: &str, extra: &[(&str, &str)]) -> Self {
        Self::start_on(
            TestDb::new(Backend::Sqlite),
            master_url,
            sync_id,
            mode,
            extra,
        )
    }

    /// As [`Satellite::start`], on `db` (a SQLite file placed by the caller,
    /// e.g. on the power-cut filesystem of [`crate::lazyfs`]).
    pub fn start_on(
        db: TestDb,
        master_url: &str,
        sync_id: u32,
        mode: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut vars = env(&[
            ("STORESYNC_LISTEN", "127.0.0.1:0"),
            ("STORESYNC_MASTER_URL", master_url),
            ("STORESYNC_SYNC_USER", SYNC_USER),
            ("STORESYNC_SYNC_PASSWORD", SYNC_PASSWORD),
            ("STORESYNC_SYNC_MODE", mode),
            ("STORESYNC_OPERATOR_USER", OPERATOR_USER),
            ("STORESYNC_OPERATOR_PASSWORD", OPERATOR_PASSWORD),
            ("STORESYNC_AUTHORISATION_CODE", AUTHORISATION_CODE),
            ("STORESYNC_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS),
            ("STORESYNC_SHUTDOWN_GRACE_SECONDS", "5"),
            // Short reconnect backoff: tests kill and cut links on purpose.
            ("STORESYNC_BACKOFF_MAX_MS", "1000"),
        ]);
        vars.push(("STORESYNC_SYNC_ID".into(), sync_id.to_string()));
        vars.push(("STORESYNC_DATABASE_URL".into(), db.url()));
        vars.extend(env(extra));
        let process = spawn_satellite(sync_id, &vars);
        Self {
            process,
            db,
            sync_id,
            env: vars,
        }
    }

    /// Kills the satellite (SIGKILL) and starts it again on the same database.
    pub fn restart_after_kill(&mut self) {
        self.process.kill();
        self.start_again();
    }

    /// Starts the (stopped) satellite again on the same database.
    pub fn start_again(&mut self) {
        self.process = spawn_satellite(self.sync_id, &self.env);
    }

    /// Kills the satellite and starts it again on the same database with
    /// `vars` changed in its configuration (new sync credentials, say); they
    /// stay for every later start.
    pub fn restart_with(&mut self, vars: &[(&str, &str)]) {
        self.process.kill();
        self.env
            .retain(|(key, _)| !vars.iter().any(|(changed, _)| changed == key));
        self.env.extend(env(vars));
        self.start_again();
    }

    /// Starts another satellite with this one's configuration (Sync ID, mode,
    /// master URL) on `db`: a replacement machine, or the site given a new database.
    pub fn start_replacement(&self, db: TestDb) -> Self {
        let mut vars = self.env.clone();
        vars.retain(|(k, _)| k != "STORESYNC_DATABASE_URL" && k != "STORESYNC_LISTEN");
        vars.push(("STORESYNC_LISTEN".into(), "127.0.0.1:0".into()));
        vars.push(("STORESYNC_DATABASE_URL".into(), db.url()));
        let process = spawn_satellite(self.sync_id, &vars);
        Self {
            process,
            db,
            sync_id: self.sync_id,
            env: vars,
        }
    }

    /// `sync_state.halted` of its database: empty unless it stopped syncing for good.
    pub async fn halted(&self) -> String {
        use sea_orm::{ConnectionTrait, Statement};
        let conn = self.db.connect().await;
        let row = conn
            .query_one(Statement::from_string(
                conn.get_database_backend(),
                "SELECT halted FROM sync_state WHERE id = 1",
            ))
            .await
            .expect("read sync_state")
            .expect("the sync_state row");
        let halted = row.try_get_by_index(0).expect("halted");
        let _ = conn.close().await;
        halted
    }

    /// Kills the satellite, deletes its database (a lost disk) and starts it
    /// again on a new, empty one. The master refuses the new database until
    /// it is adopted (see [`Satellite::replace_disk`]).
    pub fn restart_with_empty_disk(&mut self) {
        self.process.kill();
        if let TestDb::Sqlite { path, .. } = &self.db {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        self.start_again();
    }

    /// Runs `satellite-agent <args>` with this satellite's configuration (its
    /// database), as an operator would on its machine; returns (success, stdout + stderr).
    pub fn command(&self, args: &[&str]) -> (bool, String) {
        let mut command =
            std::process::Command::new(bin_path("satellite-agent", "STORESYNC_SATELLITE_BIN"));
        command.args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("STORESYNC_") {
                command.env_remove(key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let output = command.output().expect("run satellite-agent");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("[satellite-{} {}] {text}", self.sync_id, args.join(" "));
        (output.status.success(), text)
    }

    /// A lost disk replaced, as an operator does it: the satellite restarts on
    /// a new, empty database, which the master is told to adopt for this Sync ID.
    pub async fn replace_disk(&mut self, master: &Master) {
        self.restart_with_empty_disk();
        let id = database_id(&self.db).await;
        master.adopt(self.sync_id, &id).await;
    }

    pub async fn channel(&self) -> Authed {
        InterceptedService::new(
            connect(&self.process.url()).await,
            BasicAuth::new(OPERATOR_USER, OPERATOR_PASSWORD),
        )
    }

    pub async fn store(&self) -> pb::store_service_client::StoreServiceClient<Authed> {
        pb::store_service_client::StoreServiceClient::new(self.channel().await)
    }

    pub async fn agent(&self) -> pb::agent_service_client::AgentServiceClient<Authed> {
        pb::agent_service_client::AgentServiceClient::new(self.channel().await)
    }

    pub async fn master_data(
        &self,
    ) -> pb::master_data_service_client::MasterDataServiceClient<Authed> {
        pb::master_data_service_client::MasterDataServiceClient::new(self.channel().await)
    }

    pub async fn status(&self) -> pb::AgentStatus {
        self.agent()
            .await
            .status(pb::AgentStatusRequest {})
            .await
            .expect("agent status")
            .into_inner()
    }

    /// Waits until the satellite is initialised and reports its status.
    pub async fn wait_initialised(&self, limit: Duration) -> pb::AgentStatus {
        crate::eventually(
            limit,
            &format!("satellite {} to initialise", self.sync_id),
            || async {
                let status = self.status().await;
                status.initialised.then_some(status)
            },
        )
        .await
    }

    /// Waits until the outbox is empty (everything acknowledged by the master).
    pub async fn wait_drained(&self, limit: Duration) {
        crate::eventually(
            limit,
            &format!("satellite {} to drain its outbox", self.sync_id),
            || async {
                let status = self.status().await;
                (status.initialised && status.upstream_backlog == 0).then_some(())
            },
        )
        .await;
    }
}

/// Every row of a store's data, sorted by id: what "the same data" means.
#[derive(Debug, PartialEq)]
pub struct StoreData {
    pub stock_lines: Vec<stock_line::Model>,
    pub invoices: Vec<invoice::Model>,
    pub invoice_lines: Vec<invoice_line::Model>,
}

/// Reads all of `store_id`'s data from `db`.
pub async fn store_data(db: &DatabaseConnection, store_id: &str) -> StoreData {
    StoreData {
        stock_lines: stock_line::Entity::find()
            .filter(stock_line::Column::StoreId.eq(store_id))
            .order_by_asc(stock_line::Column::Id)
            .all(db)
            .await
            .expect("stock lines"),
        invoices: invoice::Entity::find()
            .filter(invoice::Column::StoreId.eq(store_id))
            .order_by_asc(invoice::Column::Id)
            .all(db)
            .await
            .expect("invoices"),
        invoice_lines: invoice_line::Entity::find()
            .filter(invoice_line::Column::StoreId.eq(store_id))
            .order_by_asc(invoice_line::Column::Id)
            .all(db)
            .await
            .expect("invoice lines"),
    }
}

/// Every item and name, sorted by id.
pub async fn master_data(db: &DatabaseConnection) -> (Vec<item::Model>, Vec<name::Model>) {
    (
        item::Entity::find()
            .order_by_asc(item::Column::Id)
            .all(db)
            .await
            .expect("items"),
        name::Entity::find()
            .order_by_asc(name::Column::Id)
            .all(db)
            .await
            .expect("names"),
    )
}

/// The store hosted by `sync_id`, as the master has it.
pub async fn store_of(db: &DatabaseConnection, sync_id: u32) -> store::Model {
    store::Entity::find()
        .filter(store::Column::SyncId.eq(i32::try_from(sync_id).expect("sync id")))
        .one(db)
        .await
        .expect("store query")
        .unwrap_or_else(|| panic!("no store for Sync ID {sync_id}"))
}

/// Creates `count` items `<prefix>0001…` on the master.
pub async fn create_items(master: &Master, prefix: &str, count: usize) -> Vec<pb::Item> {
    let mut client = master.master_data().await;
    let mut items = Vec::with_capacity(count);
    for n in 1..=count {
        let item = pb::Item {
            code: format!("{prefix}{n:04}"),
            name: format!("Test medicine {prefix} {n} mg tablet"),
            unit: "tab".into(),
            default_pack_size: 100,
            active: true,
            ..Default::default()
        };
        let stored = client
            .upsert_item(pb::UpsertItemRequest { item: Some(item) })
            .await
            .expect("upsert item");
        items.push(stored.into_inner().item.expect("item"));
    }
    items
}

/// Creates a supplier and a customer name on the master.
pub async fn create_trading_partners(master: &Master, prefix: &str) -> (pb::Name, pb::Name) {
    let client = master.master_data().await;
    let make = |code: String, supplier: bool| {
        let name = pb::Name {
            code: code.clone(),
            name: format!("Partner {code}"),
            is_customer: !supplier,
            is_supplier: supplier,
            active: true,
            ..Default::default()
        };
        let request = pb::UpsertNameRequest { name: Some(name) };
        let mut client = client.clone();
        async move {
            client
                .upsert_name(request)
                .await
                .expect("upsert name")
                .into_inner()
                .name
                .expect("name")
        }
    };
    let supplier = make(format!("{prefix}SUP"), true).await;
    let customer = make(format!("{prefix}CUS"), false).await;
    (supplier, customer)
}

/// Goods in: one stock line per item, `packs` packs each.
pub async fn goods_in(
    store: &mut pb::store_service_client::StoreServiceClient<Authed>,
    supplier: &pb::Name,
    items: &[pb::Item],
    packs: f64,
    reference: &str,
) -> pb::CreateInvoiceResponse {
    let lines = items
        .iter()
        .enumerate()
        .map(|(n, item)| pb::InvoiceLine {
            item_id: item.id.clone(),
            batch: format!("{reference}-{n}"),
            expiry_date: "2029-06-30".into(),
            pack_size: 100,
            number_of_packs: packs,
            cost_price_per_pack: 2.5,
            ..Default::default()
        })
        .collect();
    let invoice = pb::Invoice {
        kind: pb::InvoiceKind::SupplierInvoice as i32,
        name_id: supplier.id.clone(),
        reference: reference.into(),
        lines,
        ..Default::default()
    };
    store
        .create_invoice(pb::CreateInvoiceRequest {
            invoice: Some(invoice),
        })
        .await
        .expect("supplier invoice")
        .into_inner()
}

/// Goods out: `packs` packs from `stock_line` to `customer`.
pub async fn goods_out(
    store: &mut pb::store_service_client::StoreServiceClient<Authed>,
    customer: &pb::Name,
    stock_line: &pb::StockLine,
    packs: f64,
) -> Result<pb::CreateInvoiceResponse, tonic::Status> {
    let invoice = pb::Invoice {
        kind: pb::InvoiceKind::CustomerInvoice as i32,
        name_id: customer.id.clone(),
        reference: "dispensing".into(),
        lines: vec![pb::InvoiceLine {
            item_id: stock_line.item_id.clone(),
            stock_line_id: stock_line.id.clone(),
            pack_size: stock_line.pack_size,
            number_of_packs: packs,
            sell_price_per_pack: 4.0,
            ..Default::default()
        }],
        ..Default::default()
    };
    store
        .create_invoice(pb::CreateInvoiceRequest {
            invoice: Some(invoice),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the satellite's copy of master data equals the master's.
pub async fn wait_master_data_equal(
    master_db: &DatabaseConnection,
    satellite: &Satellite,
    limit: Duration,
) {
    let satellite_db = satellite.db.connect().await;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let expected = master_data(master_db).await;
        let actual = master_data(&satellite_db).await;
        if expected == actual {
            // Closed now: a power cut unmounts the satellite's filesystem,
            // which an open file would hold busy.
            let _ = satellite_db.close().await;
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let ids = |items: &[item::Model]| -> std::collections::BTreeSet<String> {
                items.iter().map(|i| i.id.clone()).collect()
            };
            let (want, have) = (ids(&expected.0), ids(&actual.0));
            assert_eq!(
                actual.0.len(),
                expected.0.len(),
                "satellite {}: item count differs from the master after {limit:?}; \
                 missing on the satellite: {:?}; only on the satellite: {:?}",
                satellite.sync_id,
                want.difference(&have).collect::<Vec<_>>(),
                have.difference(&want).collect::<Vec<_>>(),
            );
            assert_eq!(
                actual, expected,
                "satellite {}: master data differs after {limit:?}",
                satellite.sync_id
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the satellite has drained its outbox, then asserts that the
/// master's copy of its store equals the satellite's, record by record.
pub async fn assert_store_copies_equal(
    master_db: &DatabaseConnection,
    satellite: &Satellite,
    limit: Duration,
) -> StoreData {
    satellite.wait_drained(limit).await;
    let status = satellite.status().await;
    let store_id = status.store.expect("satellite reports its store").id;
    let satellite_db = satellite.db.connect().await;
    let local = store_data(&satellite_db, &store_id).await;
    let _ = satellite_db.close().await;
    let copy = store_data(master_db, &store_id).await;
    assert_eq!(
        copy.stock_lines.len(),
        local.stock_lines.len(),
        "satellite {}: stock line count",
        satellite.sync_id
    );
    assert_eq!(
        copy.invoices.len(),
        local.invoices.len(),
        "satellite {}: invoice count",
        satellite.sync_id
    );
    assert_eq!(
        copy.invoice_lines.len(),
        local.invoice_lines.len(),
        "satellite {}: invoice line count",
        satellite.sync_id
    );
    assert_eq!(
        copy, local,
        "satellite {}: the master's copy differs from the satellite's store data",
        satellite.sync_id
    );
    local
}
