//! TLS and mutual TLS between satellites and the master, with certificates
//! made in the test: a satellite with a client certificate from the network's
//! CA syncs over TLS; plaintext, no client certificate, or one from another CA
//! gets nowhere. (Transport, not storage: SQLite only.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{create_items, wait_master_data_equal, Master, Satellite};
use storesync_tests::{cli_output, eventually, Backend, TestDb};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A CA and a function to issue leaf certificates from it, written as PEM files.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), issuer.pem()).unwrap();
        Self {
            issuer,
            dir: dir.to_path_buf(),
        }
    }

    fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// Issues `name` for `hosts`; returns (cert path, key path).
    fn issue(&self, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

fn client_tls(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> ClientTlsConfig {
    let mut config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    config
}

/// Whether a health check over `tls` gets an answer.
async fn reachable(url: &str, tls: Option<ClientTlsConfig>) -> bool {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    tokio::time::timeout(
        Duration::from_secs(5),
        client.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn satellites_sync_over_mutual_tls_and_strangers_do_not_connect() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new(certs.path(), "network-ca");
    let rogue = Ca::new(certs.path(), "rogue-ca");
    let (server_cert, server_key) = ca.issue("master", &["localhost", "127.0.0.1"]);
    let operator = ca.issue("operator", &[]);
    let site_2 = ca.issue("site-2", &[]);
    let impostor = rogue.issue("site-3", &[]);
    let ca_pem = ca.cert_path("network-ca");

    let master_db = TestDb::new(Backend::Sqlite);
    let tls_env = [
        ("STORESYNC_TLS_CERT", server_cert.to_str().unwrap()),
        ("STORESYNC_TLS_KEY", server_key.to_str().unwrap()),
        ("STORESYNC_TLS_CLIENT_CA", ca_pem.to_str().unwrap()),
    ];
    let master = Master::start_tls(&master_db, &tls_env, client_tls(&ca_pem, Some(&operator)));
    assert!(master.url().starts_with("https://"));
    let db = master_db.connect().await;
    master.add_site(2).await;
    master.add_site(3).await;
    create_items(&master, "TLS", 4).await;

    // Strangers: plaintext, TLS without a client certificate, a certificate from another CA.
    let plain = format!("http://{}", master.process.addr);
    assert!(
        !reachable(&plain, None).await,
        "plaintext must not reach a TLS master"
    );
    assert!(
        !reachable(&master.url(), Some(client_tls(&ca_pem, None))).await,
        "a client without a certificate must be refused"
    );
    assert!(
        !reachable(&master.url(), Some(client_tls(&ca_pem, Some(&impostor)))).await,
        "a certificate from another CA must be refused"
    );
    assert!(reachable(&master.url(), Some(client_tls(&ca_pem, Some(&site_2)))).await);

    // A satellite with the network's certificates syncs.
    let (cert, key) = &site_2;
    let satellite = Satellite::start(
        &master.url(),
        2,
        "streaming",
        &[
            ("STORESYNC_MASTER_CA", ca_pem.to_str().unwrap()),
            ("STORESYNC_MASTER_CLIENT_CERT", cert.to_str().unwrap()),
            ("STORESYNC_MASTER_CLIENT_KEY", key.to_str().unwrap()),
        ],
    );
    satellite.wait_initialised(Duration::from_secs(60)).await;
    wait_master_data_equal(&db, &satellite, Duration::from_secs(60)).await;

    // One with a certificate from another CA never gets in, and says so.
    let (cert, key) = &impostor;
    let stranger = Satellite::start(
        &master.url(),
        3,
        "streaming",
        &[
            ("STORESYNC_MASTER_CA", ca_pem.to_str().unwrap()),
            ("STORESYNC_MASTER_CLIENT_CERT", cert.to_str().unwrap()),
            ("STORESYNC_MASTER_CLIENT_KEY", key.to_str().unwrap()),
        ],
    );
    let status: pb::AgentStatus = eventually(
        Duration::from_secs(30),
        "the stranger to report its failure",
        || async {
            let status = stranger.status().await;
            (!status.last_error.is_empty()).then_some(status)
        },
    )
    .await;
    assert!(
        !status.initialised,
        "a satellite with a foreign certificate must not be initialised"
    );
    eprintln!("the stranger reports: {}", status.last_error);

    // The operator's command speaks TLS with the CLI settings: a CA, and for
    // this mutual-TLS master a client certificate.
    let address = master.url();
    let ca_arg = ca_pem.to_str().unwrap();
    let (operator_cert, operator_key) = &operator;
    let report = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "report",
            "sync-status",
            "--address",
            &address,
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        cli_output("master-service", "STORESYNC_MASTER_BIN", &args, env)
    };
    let answered = report(
        &[
            "--tls-ca",
            ca_arg,
            "--client-cert",
            operator_cert.to_str().unwrap(),
            "--client-key",
            operator_key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    let sites: serde_json::Value = serde_json::from_slice(&answered.stdout).unwrap();
    assert!(
        sites.as_array().unwrap().iter().any(|s| s["sync_id"] == 2),
        "{sites}"
    );
    // The same from the environment, as in the master's own pod.
    let from_env = report(
        &[],
        &[
            ("STORESYNC_CLI_TLS_CA", ca_arg),
            ("STORESYNC_CLI_CLIENT_CERT", operator_cert.to_str().unwrap()),
            ("STORESYNC_CLI_CLIENT_KEY", operator_key.to_str().unwrap()),
        ],
    );
    assert!(
        from_env.status.success(),
        "{}",
        String::from_utf8_lossy(&from_env.stderr)
    );
    // Without a client certificate: refused, and the message says where to look.
    let refused = report(&["--tls-ca", ca_arg], &[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--client-cert"), "{said}");
    // Plain text to a TLS master: refused.
    let plain_address = format!("http://{}", master.process.addr);
    let plain = cli_output(
        "master-service",
        "STORESYNC_MASTER_BIN",
        &["report", "sync-status", "--address", &plain_address],
        &[],
    );
    assert!(!plain.status.success());
}
