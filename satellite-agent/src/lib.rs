//! The storesync satellite agent: hosts one store's data in a local database,
//! serves it to the site's operators, and syncs it with the master.
//!
//! # Layout
//! - [`config`]: the typed, layered, checked configuration.
//! - [`schema`], [`entities`]: the satellite's own tables (the common ones are in
//!   `storesync_shared`).
//! - [`outbox`]: local store-data changes waiting for the master, written in the
//!   same transaction as each change.
//! - [`store`]: the satellite's part of the shared `StoreService` (which store,
//!   and the outbox entry of every write).
//! - [`master_data`]: `MasterDataService`, read-only from the local copy.
//! - [`agent`]: `AgentService` (status and SyncNow); [`status`]: the live sync
//!   state that the sync client drives and `AgentService` shows.
//! - [`bootstrap`]: first operator, locked sync settings.
//! - [`cli`]: `satellite-agent status`, the operator command that asks a running satellite.
//! - [`handover`]: `satellite-agent handover export|import`, moving a retired
//!   database's unsent invoices to the database that syncs the site.
//! - [`error`]: the crate's error and its gRPC status.
//! - [`metrics`]: the satellite's OpenTelemetry instruments.
//!
//! The sync client itself (the stream to the master) is started beside the
//! gRPC server by [`Satellite::serve`], from a [`SyncTask`].
pub mod agent;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod entities;
pub mod error;
pub mod handover;
pub mod master_data;
pub mod metrics;
pub mod outbox;
pub mod schema;
pub mod status;
pub mod store;
pub mod sync;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use storesync_shared::domain::store_service::StoreServiceImpl;
use storesync_shared::kit::server::{self, OperatorAuthLayer, MAX_MESSAGE_BYTES};
use storesync_shared::proto::v1::agent_service_server::AgentServiceServer;
use storesync_shared::proto::v1::master_data_service_server::MasterDataServiceServer;
use storesync_shared::proto::v1::store_service_server::StoreServiceServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

pub use config::Config;
pub use error::{Error, Result};
pub use status::SyncHandle;

/// The sync client's future, run beside the gRPC server. It should return soon
/// after [`SyncHandle::shutdown_requested`] resolves; it is aborted after the
/// drain timeout otherwise.
pub type SyncTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An opened satellite: configuration checked, database migrated, operator
/// and sync settings in place. Everything the sync client needs is here.
pub struct Satellite {
    /// The checked configuration (master URL, Sync ID, sync credentials, mode,
    /// heartbeat and backoff).
    pub config: Arc<Config>,
    /// The local database (SQLite: one connection; never use it while holding
    /// a transaction from it).
    pub db: DatabaseConnection,
    /// The live sync state, shared with `AgentService`.
    pub sync: SyncHandle,
}

/// Opens the satellite and serves until `shutdown` resolves. The sync client
/// runs beside the server when given.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    sync_task: Option<fn(&Satellite) -> SyncTask>,
) -> Result<()> {
    let satellite = Satellite::open(config).await?;
    let task = sync_task.map(|start| start(&satellite));
    satellite.serve(listener, shutdown, task).await
}

/// A database URL fit for the log (no password).
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Satellite {
    /// Opens (creating if needed) and migrates the database, creates the first
    /// operator, checks the locked sync settings.
    pub async fn open(config: Config) -> Result<Self> {
        if let Some(dir) = config.sqlite_path().and_then(|path| path.parent()) {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    what: format!("creating the data directory {}", dir.display()),
                    source,
                })?;
            }
        }
        let database = redact(&config.database_url);
        let db = storesync_shared::domain::db::connect(&config.database_url, 4)
            .await
            .map_err(|source| Error::Database {
                url: database.clone(),
                source,
            })?;
        schema::Migrator::up(&db, None)
            .await
            .map_err(|source| Error::Database {
                url: database.clone(),
                source,
            })?;
        bootstrap::check_locked_settings(&db, &config).await?;
        bootstrap::ensure_operator(&db, &config).await?;
        let state = store::sync_state(&db).await?;
        if state.initialised {
            sync::apply::build_store_data_indexes(&db).await?;
        }
        let interval = u32::try_from(state.sync_interval_minutes)
            .ok()
            .filter(|minutes| *minutes > 0)
            .unwrap_or(config.sync_interval_minutes);
        let sync = SyncHandle::new(config.sync_mode, interval);
        tracing::info!(
            sync_id = %config.sync_id,
            master = %config.master_url,
            database = %database,
            initialised = state.initialised,
            store = %state.store_code,
            "satellite opened"
        );
        Ok(Self {
            config: Arc::new(config),
            db,
            sync,
        })
    }

    /// Serves gRPC on `listener` until `shutdown` resolves, with `sync_task`
    /// running beside it; then health goes NOT_SERVING, the sync client is told
    /// to stop, and calls in flight get `config.shutdown_grace` to finish.
    ///
    /// Prints `storesync satellite listening on <addr>` on stdout once ready.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
        sync_task: Option<SyncTask>,
    ) -> Result<()> {
        let addr = listener.local_addr().map_err(|source| Error::Io {
            what: "reading the listening address".into(),
            source,
        })?;
        let (health, health_service) = tonic_health::server::health_reporter();
        let (reflection_v1, reflection_v1alpha) = server::reflection_services()?;
        let store = StoreServiceImpl::new(
            self.db.clone(),
            store::SatelliteStore::new(self.db.clone(), self.sync.clone()),
        );
        let master_data =
            MasterDataServiceServer::new(master_data::ReadOnlyMasterData::new(self.db.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let agent = AgentServiceServer::new(agent::Agent::new(
            self.db.clone(),
            self.config.clone(),
            self.sync.clone(),
        ));
        let services = [
            "",
            <StoreServiceServer<StoreServiceImpl<store::SatelliteStore>> as NamedService>::NAME,
            <MasterDataServiceServer<master_data::ReadOnlyMasterData> as NamedService>::NAME,
            <AgentServiceServer<agent::Agent> as NamedService>::NAME,
        ];
        for name in services {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key, client_ca)) = &self.config.tls {
            let config = storesync_shared::kit::tls::server_config(cert, key, client_ca.as_deref())
                .map_err(|e| Error::Domain(storesync_shared::Error::Internal(e)))?;
            builder = builder.tls_config(config)?;
        }
        let router = builder
            .layer(storesync_shared::kit::telemetry::grpc::GrpcServerLayer::new())
            .layer(OperatorAuthLayer::new(self.db.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(store.into_server())
            .add_service(master_data)
            .add_service(agent);
        let server = router.serve_with_incoming_shutdown(server::incoming(listener), async {
            let _ = stop_rx.await;
        });
        tokio::pin!(server);

        // The one stdout line; the test harness and operators wait for it.
        println!("storesync satellite listening on {addr}");
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, "serving");

        let sync_task = sync_task.map(tokio::spawn);
        let mut shutdown = std::pin::pin!(shutdown);
        let ended_early = tokio::select! {
            result = &mut server => Some(result),
            () = &mut shutdown => None,
        };
        for name in services {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        self.sync.begin_shutdown();
        let drain = self.config.shutdown_grace;
        let served = match ended_early {
            Some(result) => result,
            None => {
                tracing::info!(?drain, "draining");
                let _ = stop_tx.send(());
                match tokio::time::timeout(drain, &mut server).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(
                            "calls still in flight after the drain timeout: closing them"
                        );
                        Ok(())
                    }
                }
            }
        };
        if let Some(mut task) = sync_task {
            if tokio::time::timeout(drain, &mut task).await.is_err() {
                tracing::warn!(
                    "the sync client did not stop within the drain timeout: aborting it"
                );
                task.abort();
            }
        }
        self.db.close().await.map_err(|source| Error::Database {
            url: redact(&self.config.database_url),
            source,
        })?;
        served?;
        tracing::info!("stopped");
        Ok(())
    }
}
