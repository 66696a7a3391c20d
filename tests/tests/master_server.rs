//! The master as a server: probes, reflection, operator authentication and
//! a clean stop on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use storesync_shared::proto::v1 as pb;
use storesync_tests::master::{assert_status, Auth, Master};
use storesync_tests::{backends, TestDb};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn health_reflection_auth_and_a_clean_stop_on_sigterm() {
    for backend in backends("health_reflection_auth_and_a_clean_stop_on_sigterm") {
        let db = TestDb::new(backend);
        let mut master = Master::spawn(&db).await;

        // Health needs no credentials and says SERVING once migrations ran.
        let mut health = HealthClient::new(master.channel.clone());
        for service in [
            "",
            "storesync.v1.AdminService",
            "storesync.v1.MasterDataService",
        ] {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
        }

        // Reflection, both versions, without credentials (grpcurl list).
        let expected = [
            "storesync.v1.AdminService",
            "storesync.v1.MasterDataService",
            "grpc.health.v1.Health",
        ];
        let services = list_services_v1alpha(&master).await;
        for name in expected {
            assert!(
                services.contains(&name.to_owned()),
                "v1alpha lacks {name}: {services:?}"
            );
        }
        let services = list_services_v1(&master).await;
        for name in expected {
            assert!(
                services.contains(&name.to_owned()),
                "v1 lacks {name}: {services:?}"
            );
        }

        // Every other call needs operator credentials, and every failure
        // answers alike, whichever part was wrong.
        let attempts = [
            Auth::none(),
            Auth::basic(&master.operator_user, "wrong password"),
            Auth::basic("nobody", &master.operator_password),
            Auth::raw_authorization("Basic not-base64!"),
            Auth::raw_authorization("Bearer abc"),
        ];
        let mut messages = Vec::new();
        for auth in attempts {
            let status = assert_status(
                master
                    .admin_with(auth.clone())
                    .list_sites(pb::ListSitesRequest {})
                    .await,
                Code::Unauthenticated,
                "credentials",
            );
            messages.push(status.message().to_owned());
            assert_status(
                master
                    .master_data_with(auth)
                    .list_items(pb::ListItemsRequest::default())
                    .await,
                Code::Unauthenticated,
                "credentials",
            );
        }
        messages.dedup();
        assert_eq!(messages.len(), 1, "messages differ: {messages:?}");
        master
            .admin()
            .list_sites(pb::ListSitesRequest {})
            .await
            .expect("the right credentials work");

        // SIGTERM: a clean exit well within the grace period (5 s).
        let started = Instant::now();
        let status = master
            .process
            .terminate(Duration::from_secs(10))
            .expect("the master exits after SIGTERM");
        assert!(status.success(), "exit status {status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "took {:?}",
            started.elapsed()
        );
    }
}

async fn list_services_v1alpha(master: &Master) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(master.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn list_services_v1(master: &Master) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(master.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}
