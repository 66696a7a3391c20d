//! Helpers to start and drive a master (see the crate docs).
//!
//! [`Master::spawn`] starts the real binary on `127.0.0.1:0` with a fresh
//! database, known operator credentials, authorisation code and shared sync
//! credentials, and returns ready-made clients that send those credentials.

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use storesync_shared::proto::v1::admin_service_client::AdminServiceClient;
use storesync_shared::proto::v1::master_data_service_client::MasterDataServiceClient;
use storesync_shared::proto::v1::{self as pb};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{bin_path, Process, TestDb};

/// Operator the master is started with.
pub const OPERATOR_USER: &str = "operator";
pub const OPERATOR_PASSWORD: &str = "operator-password-1";
/// Authorisation code the master is started with.
pub const AUTHORISATION_CODE: &str = "unlock-code-1234";
/// Shared sync credentials seeded on first start.
pub const SYNC_USER: &str = "sync";
pub const SYNC_PASSWORD: &str = "sync-password-1";
/// Sync time interval seeded on first start.
pub const SYNC_INTERVAL_MINUTES: u32 = 15;
/// Code of the master's own store.
pub const MASTER_STORE_CODE: &str = "HQ";

/// Adds `authorization` and, when unlocked, `x-unlock-token` to every call.
#[derive(Clone, Default)]
pub struct Auth {
    authorization: Option<MetadataValue<Ascii>>,
    unlock_token: Option<MetadataValue<Ascii>>,
}

impl Auth {
    /// No credentials at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// `authorization: Basic base64(user:password)`.
    pub fn basic(user: &str, password: &str) -> Self {
        Self::raw_authorization(&storesync_shared::kit::auth::basic_header(user, password))
    }

    /// Any `authorization` value, even a malformed one.
    pub fn raw_authorization(value: &str) -> Self {
        Self {
            authorization: Some(value.parse().expect("ascii header value")),
            unlock_token: None,
        }
    }

    /// The same, also sending `x-unlock-token`.
    pub fn with_unlock(mut self, token: &str) -> Self {
        self.unlock_token = Some(token.parse().expect("ascii token"));
        self
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(value) = &self.unlock_token {
            request
                .metadata_mut()
                .insert("x-unlock-token", value.clone());
        }
        Ok(request)
    }
}

pub type AdminClient = AdminServiceClient<InterceptedService<Channel, Auth>>;
pub type MasterDataClient = MasterDataServiceClient<InterceptedService<Channel, Auth>>;

/// A running master and the credentials it was started with.
pub struct Master {
    pub process: Process,
    pub operator_user: String,
    pub operator_password: String,
    pub authorisation_code: String,
    /// One HTTP/2 connection shared by the clients.
    pub channel: Channel,
}

/// The environment [`Master::spawn`] gives the binary.
pub fn master_env(db: &TestDb) -> Vec<(String, String)> {
    [
        ("STORESYNC_LISTEN", "127.0.0.1:0".to_owned()),
        ("STORESYNC_DATABASE_URL", db.url()),
        ("STORESYNC_OPERATOR_USER", OPERATOR_USER.to_owned()),
        ("STORESYNC_OPERATOR_PASSWORD", OPERATOR_PASSWORD.to_owned()),
        (
            "STORESYNC_AUTHORISATION_CODE",
            AUTHORISATION_CODE.to_owned(),
        ),
        ("STORESYNC_MASTER_STORE_CODE", MASTER_STORE_CODE.to_owned()),
        ("STORESYNC_MASTER_STORE_NAME", "Head office".to_owned()),
        ("STORESYNC_SYNC_USER", SYNC_USER.to_owned()),
        ("STORESYNC_SYNC_PASSWORD", SYNC_PASSWORD.to_owned()),
        (
            "STORESYNC_SYNC_INTERVAL_MINUTES",
            SYNC_INTERVAL_MINUTES.to_string(),
        ),
        ("STORESYNC_SHUTDOWN_GRACE_SECONDS", "5".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Master {
    /// Starts a master on `db` with the credentials of this module.
    pub async fn spawn(db: &TestDb) -> Self {
        Self::spawn_with(db, &[]).await
    }

    /// As [`Master::spawn`], with extra or overriding environment variables.
    pub async fn spawn_with(db: &TestDb, extra: &[(&str, &str)]) -> Self {
        let mut env = master_env(db);
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_owned(), (*value).to_owned()));
        }
        let bin = bin_path("master-service", "STORESYNC_MASTER_BIN");
        let label = format!("master/{:?}", db.backend());
        let process = tokio::task::spawn_blocking(move || Process::spawn(&bin, &label, &[], &env))
            .await
            .expect("spawn master");
        let channel = Channel::from_shared(process.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to the master");
        Self {
            process,
            operator_user: OPERATOR_USER.to_owned(),
            operator_password: OPERATOR_PASSWORD.to_owned(),
            authorisation_code: AUTHORISATION_CODE.to_owned(),
            channel,
        }
    }

    /// The operator's credentials.
    pub fn auth(&self) -> Auth {
        Auth::basic(&self.operator_user, &self.operator_password)
    }

    /// AdminService as the operator (not unlocked).
    pub fn admin(&self) -> AdminClient {
        self.admin_with(self.auth())
    }

    /// AdminService with any credentials.
    pub fn admin_with(&self, auth: Auth) -> AdminClient {
        AdminServiceClient::with_interceptor(self.channel.clone(), auth)
    }

    /// MasterDataService as the operator.
    pub fn master_data(&self) -> MasterDataClient {
        self.master_data_with(self.auth())
    }

    /// MasterDataService with any credentials.
    pub fn master_data_with(&self, auth: Auth) -> MasterDataClient {
        MasterDataServiceClient::with_interceptor(self.channel.clone(), auth)
    }

    /// Unlocks with the right code; returns the token.
    pub async fn unlock(&self) -> String {
        self.admin()
            .unlock(pb::UnlockRequest {
                authorisation_code: self.authorisation_code.clone(),
            })
            .await
            .expect("unlock with the right code")
            .into_inner()
            .token
    }

    /// AdminService as the operator, unlocked.
    pub async fn unlocked_admin(&self) -> AdminClient {
        let token = self.unlock().await;
        self.admin_with(self.auth().with_unlock(&token))
    }
}

/// A satellite site ready for AddSite.
pub fn satellite_site(sync_id: u32, store_code: &str) -> pb::Site {
    pb::Site {
        sync_id,
        name: format!("Satellite {sync_id}"),
        store: Some(pb::Store {
            code: store_code.to_owned(),
            name: format!("Store {store_code}"),
            ..Default::default()
        }),
        url: format!("https://site{sync_id}.example.org:50051"),
        ..Default::default()
    }
}

/// An item ready for UpsertItem.
pub fn item(code: &str) -> pb::Item {
    pb::Item {
        code: code.to_owned(),
        name: format!("Item {code}"),
        unit: "tab".to_owned(),
        default_pack_size: 100,
        active: true,
        ..Default::default()
    }
}

/// A name ready for UpsertName.
pub fn name(code: &str) -> pb::Name {
    pb::Name {
        code: code.to_owned(),
        name: format!("Name {code}"),
        is_customer: true,
        active: true,
        ..Default::default()
    }
}

/// One row of the master's change log.
#[derive(Debug, Clone)]
pub struct ChangeLogRow {
    pub seq: i64,
    pub table_name: String,
    pub record_id: String,
    pub deleted: bool,
    pub record: pb::SyncRecord,
}

/// The whole change log, in order, read straight from the database.
pub async fn change_log(db: &DatabaseConnection) -> Vec<ChangeLogRow> {
    use prost::Message;
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT seq, table_name, record_id, deleted, payload FROM change_log ORDER BY seq",
        ))
        .await
        .expect("read change_log");
    rows.into_iter()
        .map(|row| {
            let payload: Vec<u8> = row.try_get("", "payload").expect("payload");
            ChangeLogRow {
                seq: row.try_get("", "seq").expect("seq"),
                table_name: row.try_get("", "table_name").expect("table_name"),
                record_id: row.try_get("", "record_id").expect("record_id"),
                deleted: row.try_get("", "deleted").expect("deleted"),
                record: pb::SyncRecord::decode(payload.as_slice()).expect("payload decodes"),
            }
        })
        .collect()
}

/// Runs one SQL statement straight on the database (to plant store data).
pub async fn execute(db: &DatabaseConnection, sql: &str) {
    db.execute(Statement::from_string(
        db.get_database_backend(),
        sql.to_owned(),
    ))
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Plants a stock line of `item_id` in `store_id`.
pub async fn plant_stock_line(db: &DatabaseConnection, store_id: &str, item_id: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    execute(
        db,
        &format!(
            "INSERT INTO stock_line (id, store_id, item_id, batch, expiry_date, pack_size, \
             available_number_of_packs, total_number_of_packs, cost_price_per_pack, \
             sell_price_per_pack, updated_at_ms) \
             VALUES ('{id}', '{store_id}', '{item_id}', 'B1', '2030-01-31', 10, 5, 5, 1.5, 2.5, 0)"
        ),
    )
    .await;
    id
}

/// Plants a customer invoice of `store_id` to `name_id`.
pub async fn plant_invoice(db: &DatabaseConnection, store_id: &str, name_id: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    execute(
        db,
        &format!(
            "INSERT INTO invoice (id, store_id, name_id, kind, status, invoice_number, reference, \
             created_at_ms) VALUES ('{id}', '{store_id}', '{name_id}', 'CUSTOMER_INVOICE', \
             'FINALISED', 1, '', 0)"
        ),
    )
    .await;
    id
}

/// Asserts that `result` failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) -> tonic::Status {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should contain {needle:?}",
        status.message()
    );
    status
}
