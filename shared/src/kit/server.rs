//! Serving plumbing both binaries use: accepted sockets with TCP_NODELAY,
//! health and reflection services, operator authentication as a tower layer,
//! and the SIGINT/SIGTERM shutdown future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::domain::entities::operator;
use crate::domain::error::Error;
use crate::kit::auth;

/// Largest gRPC message either side accepts or sends, in bytes. Batches are
/// sized well below it (see the sync module); this bound stops a hostile peer
/// from making the receiver buffer without limit.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Accepted connections of `listener`, with Nagle's algorithm off: small
/// acks and heartbeats must not wait ~40 ms for the next segment.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// gRPC server reflection, both `grpc.reflection.v1` and `v1alpha` (grpcurl
/// 1.8 speaks only the latter), describing storesync and health.
pub fn reflection_services() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// Resolves on the first SIGINT or SIGTERM (Kubernetes sends SIGTERM).
///
/// The handlers are installed when this is called, not when the future is
/// first polled: call it (inside the runtime) before announcing the listening
/// address, so that a SIGTERM sent right after the announcement is a graceful
/// shutdown and not the default, immediate death.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            async fn received(name: &str, installed: std::io::Result<tokio::signal::unix::Signal>) {
                match installed {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            }
            tokio::select! {
                () = received("SIGINT", interrupt) => tracing::info!("SIGINT (Ctrl-C) received: shutting down"),
                () = received("SIGTERM", terminate) => tracing::info!("SIGTERM received: shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received: shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// The operator a request was authenticated as; handlers read it from the
/// request extensions (for the audit trail).
#[derive(Clone, Debug)]
pub struct Operator(pub String);

/// Paths served without operator credentials: probes, reflection, and the sync
/// stream (which checks the sync credentials itself).
const OPEN_PATH_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/storesync.v1.SyncService/",
];

/// Checks `user:password` against the `operator` table.
pub async fn authenticate_operator(
    db: &DatabaseConnection,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Operator, Error> {
    let credentials = auth::basic_credentials(metadata)?;
    let found = operator::Entity::find_by_id(credentials.user.clone())
        .one(db)
        .await?;
    // Verify against a dummy hash when the user is unknown, so both failures
    // take about as long and answer alike.
    let hash = match found {
        Some(operator) => operator.password_hash,
        None => dummy_hash().await?,
    };
    if auth::verify_secret(credentials.password, hash).await {
        Ok(Operator(credentials.user))
    } else {
        tracing::warn!(user = %credentials.user, "operator authentication failed");
        Err(Error::Unauthenticated(auth::BAD_CREDENTIALS.to_owned()))
    }
}

/// argon2id hash of a random secret nobody knows, made once per process.
async fn dummy_hash() -> Result<String, Error> {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_try_init(|| auth::hash_secret(auth::generate_secret(32)))
        .await
        .cloned()
}

/// Tower layer that requires operator credentials on every path but the open ones.
#[derive(Clone)]
pub struct OperatorAuthLayer {
    db: DatabaseConnection,
}

impl OperatorAuthLayer {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

impl<S> tower::Layer<S> for OperatorAuthLayer {
    type Service = OperatorAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OperatorAuth {
            inner,
            db: self.db.clone(),
        }
    }
}

/// See [`OperatorAuthLayer`].
#[derive(Clone)]
pub struct OperatorAuth<S> {
    inner: S,
    db: DatabaseConnection,
}

impl<S, B> tower::Service<http::Request<B>> for OperatorAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready is the one that must serve the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let db = self.db.clone();
        Box::pin(async move {
            let path = request.uri().path();
            if OPEN_PATH_PREFIXES
                .iter()
                .any(|prefix| path.starts_with(prefix))
            {
                return inner.call(request).await;
            }
            let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
            match authenticate_operator(&db, &metadata).await {
                Ok(operator) => {
                    request.extensions_mut().insert(operator);
                    inner.call(request).await
                }
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}
