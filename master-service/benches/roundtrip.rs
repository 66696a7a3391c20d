//! Small round trips, to show a Nagle/delayed-ACK stall (~40 ms) should one
//! come back: sqlx 0.9 (under sea-orm 2) stopped setting TCP_NODELAY on
//! database sockets, and tonic leaves it off on accepted sockets unless asked.
//!
//! `cargo bench -p master-service --bench roundtrip` prints the median and
//! 99th percentile of: one-row `INSERT` transactions on PostgreSQL (when
//! `TEST_DATABASE_URL` is set) and unary gRPC calls to a server served through
//! `storesync_shared::kit::server::incoming`. Healthy figures are well under 1 ms;
//! a stall shows as tens of milliseconds.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Statement};

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "{label:<44} n={:<5} p50={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        samples.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
}

#[tokio::main]
async fn main() {
    const ROUNDS: usize = 500;
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => {
            let db = storesync_shared::domain::db::connect(&url, 2)
                .await
                .unwrap();
            let backend = db.get_database_backend();
            db.execute(Statement::from_string(
                backend,
                "CREATE TABLE IF NOT EXISTS storesync_roundtrip_bench (n BIGINT)",
            ))
            .await
            .unwrap();
            let mut samples = Vec::with_capacity(ROUNDS);
            for n in 0..ROUNDS {
                let started = Instant::now();
                let txn = storesync_shared::domain::db::begin(&db).await.unwrap();
                txn.execute(Statement::from_string(
                    backend,
                    format!("INSERT INTO storesync_roundtrip_bench VALUES ({n})"),
                ))
                .await
                .unwrap();
                txn.commit().await.unwrap();
                samples.push(started.elapsed());
            }
            summary("postgres: BEGIN; INSERT one row; COMMIT", samples);
            db.execute(Statement::from_string(
                backend,
                "DROP TABLE storesync_roundtrip_bench",
            ))
            .await
            .unwrap();
        }
        Err(_) => println!("SKIPPED postgres round trips: TEST_DATABASE_URL is not set"),
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(storesync_shared::kit::server::incoming(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    summary("grpc: unary health check over loopback", samples);
    server.abort();
}
