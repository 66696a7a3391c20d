//! Helpers to start and drive a satellite (see the crate docs).

use std::time::Duration;

use storesync_shared::proto::v1::agent_service_client::AgentServiceClient;
use storesync_shared::proto::v1::master_data_service_client::MasterDataServiceClient;
use storesync_shared::proto::v1::store_service_client::StoreServiceClient;
use tonic::transport::Channel;

use crate::{bin_path, with_basic, Process, TestDb};

/// Operator the helpers create on every satellite.
pub const OPERATOR_USER: &str = "operator";
/// Its password.
pub const OPERATOR_PASSWORD: &str = "operator-password";
/// Sync credentials the helpers give every satellite (a master under test
/// must expect the same).
pub const SYNC_USER: &str = "sync";
/// See [`SYNC_USER`].
pub const SYNC_PASSWORD: &str = "sync-password";

/// A master URL where nobody listens (port 9 is "discard", never served here).
pub const NOWHERE: &str = "http://127.0.0.1:9";

/// A running satellite-agent.
pub struct Satellite {
    pub process: Process,
    pub sync_id: u32,
}

/// Starts a satellite with Sync ID `sync_id` on `db`, syncing with
/// `master_url`, on an ephemeral port, with `extra` environment on top.
pub fn spawn_satellite(
    db: &TestDb,
    master_url: &str,
    sync_id: u32,
    extra: &[(&str, &str)],
) -> Satellite {
    let mut env: Vec<(String, String)> = [
        ("STORESYNC_MASTER_URL", master_url.to_owned()),
        ("STORESYNC_SYNC_ID", sync_id.to_string()),
        ("STORESYNC_SYNC_USER", SYNC_USER.to_owned()),
        ("STORESYNC_SYNC_PASSWORD", SYNC_PASSWORD.to_owned()),
        ("STORESYNC_DATABASE_URL", db.url()),
        ("STORESYNC_LISTEN", "127.0.0.1:0".to_owned()),
        ("STORESYNC_OPERATOR_USER", OPERATOR_USER.to_owned()),
        ("STORESYNC_OPERATOR_PASSWORD", OPERATOR_PASSWORD.to_owned()),
        ("STORESYNC_BACKOFF_INITIAL_MS", "100".to_owned()),
        ("STORESYNC_BACKOFF_MAX_MS", "1000".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    for (key, value) in extra {
        env.retain(|(k, _)| k != key);
        env.push(((*key).to_owned(), (*value).to_owned()));
    }
    let bin = bin_path("satellite-agent", "STORESYNC_SATELLITE_BIN");
    let process = Process::spawn(&bin, &format!("satellite-{sync_id}"), &[], &env);
    Satellite { process, sync_id }
}

impl Satellite {
    /// A channel to its gRPC server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.process.url())
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the satellite")
    }

    pub async fn store(&self) -> StoreServiceClient<Channel> {
        StoreServiceClient::new(self.channel().await)
    }

    pub async fn master_data(&self) -> MasterDataServiceClient<Channel> {
        MasterDataServiceClient::new(self.channel().await)
    }

    pub async fn agent(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel().await)
    }
}

/// `message` with the helpers' operator credentials.
pub fn as_operator<T>(message: T) -> tonic::Request<T> {
    with_basic(
        tonic::Request::new(message),
        OPERATOR_USER,
        OPERATOR_PASSWORD,
    )
}
