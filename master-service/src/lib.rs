//! The storesync master: master data, the "sync with" list and the locked sync
//! preferences, every store's data, and (in `sync`) the sync stream.
//!
//! # Layout
//! - [`config`]: the one typed configuration, layered and checked at start.
//! - [`error`]: the crate's error and its mapping to a gRPC status.
//! - [`schema`], [`entities`]: the master's own tables (the common ones are in
//!   `storesync_shared`).
//! - [`bootstrap`]: first start: operator, authorisation code, preferences, site 1.
//! - [`changelog`]: the gap-free log of master-data changes that the sync stream reads.
//! - [`sync`]: the sync stream (`SyncService.Sync`): sessions, upstream apply, downstream and initialisation.
//! - [`master_data`]: items and names (`MasterDataService`).
//! - [`admin`]: `AdminService`, over [`sites`], [`preferences`], [`unlock`] and [`audit`].
//! - [`settings`]: the `setting` table's keys.
//! - [`report`]: `ReportService`: stock on hand, store activity and expiring
//!   stock across every store, and the sync status of every site.
//! - [`metrics`]: the master's OpenTelemetry instruments and per-site gauge sampler.
//! - [`store`]: `StoreService` for the master's own store (Sync ID 1).
//!
//! [`serve`] is what `main` and the tests run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use storesync_shared::kit::server::{self, OperatorAuthLayer, MAX_MESSAGE_BYTES};
use storesync_shared::proto::v1::admin_service_server::AdminServiceServer;
use storesync_shared::proto::v1::master_data_service_server::MasterDataServiceServer;
use storesync_shared::proto::v1::report_service_server::ReportServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

pub mod admin;
pub mod audit;
pub mod bootstrap;
pub mod changelog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod entities;
pub mod error;
pub mod integrity;
pub mod master_data;
pub mod metrics;
pub mod preferences;
pub mod report;
pub mod schema;
pub mod settings;
pub mod sites;
pub mod store;
pub mod sync;
pub mod transfers;
pub mod unlock;

pub use config::Config;
pub use error::{Error, Result};

/// What every service of the master shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database: the only place the master keeps state, so replicas can
    /// run side by side.
    pub db: DatabaseConnection,
    /// The checked configuration.
    pub config: Arc<Config>,
    /// Wakes the streams that tail the change log after a master-data commit.
    pub notifier: changelog::ChangeNotifier,
    /// Tells this process's sync sessions that an operator changed their site.
    pub site_changes: sync::SiteChanges,
    /// Turns true when shutdown begins: long-lived streams should finish
    /// their current batch and end, so the drain completes within the grace period.
    pub shutting_down: watch::Receiver<bool>,
}

/// Opens the database, runs migrations and the first-start bootstrap, prints
/// `storesync master listening on <addr>` and serves gRPC on `listener` until
/// `shutdown` resolves; then drains for at most the configured grace period.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|source| Error::Io {
        what: "reading the listen address".into(),
        source,
    })?;
    let db = storesync_shared::domain::db::connect(&config.database_url, config.db_max_connections)
        .await?;
    schema::Migrator::up(&db, None).await?;
    bootstrap::run(&db, &config, &mut std::io::stdout()).await?;
    changelog::ensure_epoch(&db).await?;

    let (shutdown_tx, shutting_down) = watch::channel(false);
    let state = AppState {
        db: db.clone(),
        config: Arc::new(config),
        notifier: changelog::ChangeNotifier::default(),
        site_changes: sync::SiteChanges::default(),
        shutting_down,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    let (reflection_v1, reflection_v1alpha) = server::reflection_services()
        .map_err(|e| Error::internal(format!("building the reflection service: {e}")))?;
    let admin = AdminServiceServer::new(admin::AdminApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let master_data = MasterDataServiceServer::new(master_data::MasterDataApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let sync = sync::SyncContext::new(
        db.clone(),
        state.notifier.clone(),
        sync::SyncSettings {
            heartbeat: Duration::from_secs(state.config.heartbeat_seconds),
            downstream_batch_records: state.config.downstream_batch_records,
            snapshot_batches_in_flight: state.config.snapshot_batches_in_flight,
            verify_every: verify_every(&state.config),
            verify_report_only: state.config.verify_report_only,
            ..sync::SyncSettings::default()
        },
        &state.site_changes,
    );
    let mut background = vec![
        tokio::spawn(sync::retention::run(
            db.clone(),
            Duration::from_secs(state.config.changelog_prune_seconds),
        )),
        tokio::spawn(watch_database(db.clone(), health.clone())),
        tokio::spawn(integrity::record::run_pruning(
            db.clone(),
            Duration::from_secs(state.config.integrity_history_days.saturating_mul(86_400)),
            Duration::from_secs(3_600),
        )),
    ];
    if let Some(every) = verify_every(&state.config) {
        background.push(tokio::spawn(integrity::schedule::run(
            state.clone(),
            every,
            state.config.verify_report_only,
        )));
    }
    if storesync_shared::domain::db::is_postgres(&state.config.database_url) {
        // Other replicas on the same database wake this one's streams.
        background.push(sync.start_cluster_listener(state.config.database_url.clone()));
    }
    if storesync_shared::kit::telemetry::metrics_exporting() {
        background.push(tokio::spawn(metrics::run_site_sampler(
            db.clone(),
            storesync_shared::kit::telemetry::metric_export_interval(),
        )));
    }
    set_health(&health, ServingStatus::Serving).await;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Upstream batches (≤ 4 MiB, usually a few hundred KiB) flow while the
    // previous one is applied: a 1 MiB window per stream instead of HTTP/2's
    // 64 KiB keeps the next batch arriving meanwhile, and bounds what 63
    // sending satellites can make the master buffer.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(2 * 1024 * 1024);
    if let Some(tls) = &state.config.tls {
        let config = storesync_shared::kit::tls::server_config(
            &tls.cert,
            &tls.key,
            tls.client_ca.as_deref(),
        )
        .map_err(Error::internal)?;
        builder = builder
            .tls_config(config)
            .map_err(|e| Error::internal(format!("TLS: {e}")))?;
        tracing::info!(mutual = tls.client_ca.is_some(), "serving TLS");
    }
    let router = builder
        .layer(storesync_shared::kit::telemetry::grpc::GrpcServerLayer::new())
        .layer(OperatorAuthLayer::new(db.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(master_data)
        .add_service(sync.service())
        .add_service(
            storesync_shared::domain::store_service::StoreServiceImpl::new(
                db.clone(),
                store::MasterStore::new(db.clone(), state.notifier.clone()),
            )
            .into_server(),
        )
        .add_service(
            ReportServiceServer::new(report::ReportApi::new(
                db.clone(),
                state.config.heartbeat_seconds,
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    let server = router.serve_with_incoming_shutdown(server::incoming(listener), async {
        let _ = stop_rx.await;
    });

    // The test harness and operators wait for this line; the port is the real
    // one when the configuration asked for port 0.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "storesync master listening on {addr}");
        let _ = stdout.flush();
    }
    tracing::info!(%addr, "serving");

    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(Error::from),
        () = shutdown => {}
    }

    // Probes see NOT_SERVING first; then stop accepting, and drain with a limit.
    set_health(&health, ServingStatus::NotServing).await;
    let _ = shutdown_tx.send(true);
    // Sync sessions are long-lived: end them (UNAVAILABLE) so the drain can finish.
    sync.shut_down();
    for task in &background {
        task.abort();
    }
    let _ = stop_tx.send(());
    // The limit matters: hyper >= 1.5.1 can keep a graceful shutdown waiting on
    // an idle HTTP/2 client connection (hyperium/hyper#4170), not only on calls.
    let grace = Duration::from_secs(state.config.shutdown_grace_seconds);
    tracing::info!(?grace, "draining");
    match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            ?grace,
            "calls still open after the grace period; stopping anyway"
        ),
    }
    db.close().await.ok();
    tracing::info!("stopped");
    Ok(())
}

/// The period of scheduled integrity checks (`None`: off).
fn verify_every(config: &Config) -> Option<Duration> {
    (config.verify_interval_minutes > 0)
        .then(|| Duration::from_secs(config.verify_interval_minutes * 60))
}

/// Reports NOT_SERVING while the database cannot be reached and SERVING again
/// once it can: a probe then takes the replica out of its Service instead of
/// sending it calls that can only fail.
async fn watch_database(db: DatabaseConnection, health: tonic_health::server::HealthReporter) {
    let mut reachable = true;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now_reachable = tokio::time::timeout(Duration::from_secs(5), db.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if now_reachable != reachable {
            reachable = now_reachable;
            if reachable {
                tracing::info!("the database is reachable again: SERVING");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                tracing::warn!("the database cannot be reached: NOT_SERVING until it can");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

/// Sets the overall status and that of each storesync service.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    metrics::ready(status == ServingStatus::Serving);
    for service in [
        "",
        "storesync.v1.AdminService",
        "storesync.v1.MasterDataService",
        "storesync.v1.SyncService",
        "storesync.v1.StoreService",
        "storesync.v1.ReportService",
    ] {
        health.set_service_status(service, status).await;
    }
}
