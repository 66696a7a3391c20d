//! Scenario: OpenTelemetry from the real binaries, received by an in-process
//! OTLP collector. One upstream batch is one trace from the satellite's push
//! to the master's apply; one master-data batch is one trace from the master's
//! send to the satellite's apply; the metrics carry the site's Sync ID; and a
//! graceful stop flushes what the satellite still buffered.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use storesync_shared::kit::telemetry::catalog;
use storesync_shared::proto::v1 as pb;
use storesync_tests::cluster::{
    assert_store_copies_equal, create_items, create_trading_partners, goods_in, store_of,
    wait_master_data_equal, Master, Satellite, SYNC_PASSWORD, SYNC_USER,
};
use storesync_tests::otlp::{OtlpReceiver, Point, Span};
use storesync_tests::raw;
use storesync_tests::{backends, eventually, TestDb};

const LIMIT: Duration = Duration::from_secs(60);

/// A metric, the attributes one of its points must have, and a check of its value.
type Expected = (
    &'static str,
    &'static [(&'static str, &'static str)],
    fn(f64) -> bool,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_one_trace_across_sites_and_the_metrics_name_the_site() {
    for backend in backends("a_batch_is_one_trace_across_sites_and_the_metrics_name_the_site") {
        let receiver = OtlpReceiver::start().await;
        let endpoint = receiver.endpoint();
        let master_db = TestDb::new(backend);
        // The master exports often; its service name is the default one.
        let mut master = Master::start(
            &master_db,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment.name=test",
                ),
            ],
        );
        let db = master_db.connect().await;
        master.add_site(2).await;
        master.add_site(3).await;
        let items = create_items(&master, "OTEL", 2).await;
        let (supplier, _) = create_trading_partners(&master, "T").await;
        // The satellite exports only when it stops: proves the shutdown flush.
        let mut satellite = Satellite::start(
            &master.url(),
            2,
            "streaming",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_SERVICE_NAME", "satellite-two"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
                ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
            ],
        );
        satellite.wait_initialised(LIMIT).await;
        let mut store = satellite.store().await;
        goods_in(&mut store, &supplier, &items, 10.0, "OTEL-1").await;
        assert_store_copies_equal(&db, &satellite, LIMIT).await;
        create_items(&master, "LIVE", 1).await;
        wait_master_data_equal(&db, &satellite, LIMIT).await;

        // A wrong password, and a batch of another store's data from site 3.
        let refused = raw::open(
            &master.url(),
            "3",
            SYNC_USER,
            "wrong-password",
            raw::hello(3),
        )
        .await;
        assert_eq!(refused.err().unwrap().code(), tonic::Code::Unauthenticated);
        let foreign_store = store_of(&db, 2).await;
        let status = push_foreign_batch(&master.url(), &foreign_store.id, &items[0].id).await;
        assert_eq!(status.code(), tonic::Code::PermissionDenied);

        // While the satellite is connected, the master exports its session.
        eventually(LIMIT, "the master to export site 2's session", || async {
            receiver
                .points()
                .iter()
                .any(|p| {
                    p.service == "master-service"
                        && p.metric == catalog::SITES_CONNECTED.name
                        && has(p, &[("sync_id", "2")])
                        && p.value == 1.0
                })
                .then_some(())
        })
        .await;

        let exit = satellite
            .process
            .terminate(Duration::from_secs(30))
            .expect("the satellite stops on SIGTERM");
        assert!(exit.success(), "satellite exit: {exit:?}");

        // Upstream: the satellite's push and the master's apply, one trace.
        let (push, apply) = eventually(LIMIT, "an upstream push and its apply", || async {
            let spans = receiver.spans();
            parent_and_child(
                &spans,
                "satellite-two",
                "sync.upstream.push",
                "master-service",
                "sync.upstream.apply",
            )
        })
        .await;
        assert_eq!(push.attributes["sync_id"], "2");
        assert_eq!(apply.attributes["sync_id"], "2");
        assert_eq!(apply.attributes["first_seq"], push.attributes["first_seq"]);
        assert_eq!(
            apply
                .resource
                .get("deployment.environment.name")
                .map(String::as_str),
            Some("test"),
            "OTEL_RESOURCE_ATTRIBUTES is honoured"
        );
        // Downstream: the master's send and the satellite's apply, one trace.
        let (send, applied) = eventually(LIMIT, "a downstream send and its apply", || async {
            let spans = receiver.spans();
            parent_and_child(
                &spans,
                "master-service",
                "sync.downstream.send",
                "satellite-two",
                "sync.downstream.apply",
            )
        })
        .await;
        assert_eq!(
            send.attributes["end_cursor"],
            applied.attributes["end_cursor"]
        );

        // Metrics, with the attributes a dashboard groups by.
        let master_expects: &[Expected] = &[
            (catalog::SITES_CONNECTED.name, &[("sync_id", "2")], |v| {
                v == 1.0
            }),
            (
                catalog::RECORDS_APPLIED.name,
                &[
                    ("sync_id", "2"),
                    ("direction", "upstream"),
                    ("table", "invoice"),
                ],
                |v| v >= 1.0,
            ),
            (
                catalog::RECORDS_APPLIED.name,
                &[
                    ("sync_id", "2"),
                    ("direction", "upstream"),
                    ("table", "stock_line"),
                ],
                |v| v >= 2.0,
            ),
            (
                catalog::BATCH_DURATION.name,
                &[("sync_id", "2"), ("direction", "upstream")],
                |v| v >= 1.0,
            ),
            (catalog::UPSTREAM_BACKLOG.name, &[("sync_id", "2")], |v| {
                v == 0.0
            }),
            (catalog::DOWNSTREAM_PENDING.name, &[("sync_id", "2")], |v| {
                v == 0.0
            }),
            (catalog::DOWNSTREAM_DELAY.name, &[("sync_id", "2")], |v| {
                v == 0.0
            }),
            (catalog::LAST_SUCCESS.name, &[("sync_id", "2")], |v| {
                v > 1.7e9
            }),
            (catalog::INIT_PROGRESS.name, &[("sync_id", "2")], |v| {
                v == 1.0
            }),
            (catalog::AUTH_FAILURES.name, &[("sync_id", "3")], |v| {
                v >= 1.0
            }),
            (
                catalog::BATCHES_REJECTED.name,
                &[("sync_id", "3"), ("reason", "permission_denied")],
                |v| v >= 1.0,
            ),
            (catalog::SERVER_READY.name, &[], |v| v == 1.0),
            (
                catalog::SITE_PROTOCOL_VERSION.name,
                &[("sync_id", "2")],
                |v| v >= 1.0,
            ),
            (
                catalog::RPC_SERVER_DURATION.name,
                &[
                    ("rpc.service", "storesync.v1.SyncService"),
                    ("rpc.method", "Sync"),
                ],
                |v| v >= 1.0,
            ),
        ];
        let satellite_expects: &[Expected] = &[
            (
                catalog::RECORDS_APPLIED.name,
                &[
                    ("sync_id", "2"),
                    ("direction", "downstream"),
                    ("table", "item"),
                ],
                |v| v >= 3.0,
            ),
            (
                catalog::BATCH_DURATION.name,
                &[("sync_id", "2"), ("direction", "downstream")],
                |v| v >= 1.0,
            ),
            (
                catalog::RPC_SERVER_DURATION.name,
                &[
                    ("rpc.service", "storesync.v1.StoreService"),
                    ("rpc.method", "CreateInvoice"),
                ],
                |v| v >= 1.0,
            ),
        ];
        eventually(LIMIT, "every expected metric", || async {
            let points = receiver.points();
            let missing: Vec<String> = master_expects
                .iter()
                .map(|e| ("master-service", e))
                .chain(satellite_expects.iter().map(|e| ("satellite-two", e)))
                .filter(|(service, (name, attrs, ok))| {
                    !points.iter().any(|p| {
                        p.service == *service && p.metric == *name && has(p, attrs) && ok(p.value)
                    })
                })
                .map(|(service, (name, attrs, _))| format!("{service}: {name} {attrs:?}"))
                .collect();
            if missing.is_empty() {
                Some(())
            } else {
                eprintln!("still missing: {missing:#?}");
                None
            }
        })
        .await;
        // Everything exported is in the catalogue, with its unit.
        for point in receiver.points() {
            let desc = catalog::ALL
                .iter()
                .find(|d| d.name == point.metric)
                .unwrap_or_else(|| panic!("{} is exported but not in the catalogue", point.metric));
            assert_eq!(point.unit, desc.unit, "unit of {}", point.metric);
        }

        let exit = master
            .process
            .terminate(Duration::from_secs(30))
            .expect("the master stops on SIGTERM");
        assert!(exit.success(), "master exit: {exit:?}");
        receiver.stop().await;
    }
}

/// A span named `parent_name` of `parent_service` with a child named
/// `child_name` of `child_service` in the same trace.
/// Scenario: an operator calls the master with grpcurl, once passing the
/// `traceparent` of their own trace. Every call is one server span named
/// after its RPC with the RPC attributes and its status; the one with a
/// `traceparent` is a child of the caller's span; health probes make none;
/// and a JSON log line written during a call names that call's trace and span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_a_span_that_continues_the_callers_trace() {
    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    const UPSERT: &str = "storesync.v1.MasterDataService/UpsertItem";
    const UNLOCK: &str = "storesync.v1.AdminService/Unlock";
    for backend in backends("every_call_is_a_span_that_continues_the_callers_trace") {
        let receiver = OtlpReceiver::start().await;
        let endpoint = receiver.endpoint();
        let master_db = TestDb::new(backend);
        let master = Master::start(
            &master_db,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ("STORESYNC_LOG_FORMAT", "json"),
            ],
        );
        // Two plain calls, one carrying the caller's context, one refused.
        create_items(&master, "SPAN", 2).await;
        let mut client = master.master_data().await;
        let item = |code: &str| pb::UpsertItemRequest {
            item: Some(pb::Item {
                code: code.into(),
                name: format!("Traced {code}"),
                unit: "tab".into(),
                default_pack_size: 10,
                active: true,
                ..Default::default()
            }),
        };
        let mut traced = tonic::Request::new(item("TRACED"));
        traced.metadata_mut().insert(
            "traceparent",
            format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
                .parse()
                .unwrap(),
        );
        client.upsert_item(traced).await.unwrap();
        let refused = client.upsert_item(item("")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        // A wrong authorisation code is logged (a warning) inside its call.
        let wrong = master
            .admin()
            .await
            .unlock(pb::UnlockRequest {
                authorisation_code: "not-the-code".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            tonic::transport::Channel::from_shared(master.url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();

        let (upserts, unlock) = eventually(LIMIT, "the calls' spans", || async {
            let spans = receiver.spans();
            let named = |name: &str| -> Vec<Span> {
                spans
                    .iter()
                    .filter(|s| s.service == "master-service" && s.name == name)
                    .cloned()
                    .collect()
            };
            let (upserts, unlock) = (named(UPSERT), named(UNLOCK));
            (upserts.len() >= 4 && !unlock.is_empty()).then_some((upserts, unlock))
        })
        .await;
        assert_eq!(upserts.len(), 4, "one span per call: {upserts:#?}");
        for span in &upserts {
            assert_eq!(span.kind, 2, "a server span: {span:?}");
            assert_eq!(span.attributes["rpc.system"], "grpc");
            assert_eq!(
                span.attributes["rpc.service"],
                "storesync.v1.MasterDataService"
            );
            assert_eq!(span.attributes["rpc.method"], "UpsertItem");
            assert_eq!(span.attributes["network.peer.address"], "127.0.0.1");
            assert!(
                span.attributes.contains_key("network.peer.port"),
                "{span:?}"
            );
        }
        let mut codes: Vec<&str> = upserts
            .iter()
            .map(|s| s.attributes["rpc.grpc.status_code"].as_str())
            .collect();
        codes.sort_unstable();
        assert_eq!(codes, ["0", "0", "0", "3"]);
        let children: Vec<&Span> = upserts
            .iter()
            .filter(|s| hex(&s.trace_id) == CALLER_TRACE)
            .collect();
        assert_eq!(children.len(), 1, "one call carried the caller's trace");
        assert_eq!(hex(&children[0].parent_span_id), CALLER_SPAN);
        let roots = upserts
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .count();
        assert_eq!(
            roots, 3,
            "calls without a traceparent start their own trace"
        );
        assert_eq!(unlock[0].attributes["rpc.grpc.status_code"], "7");
        assert!(
            receiver
                .spans()
                .iter()
                .all(|s| !s.name.starts_with("grpc.health")),
            "health probes make no span"
        );

        // The warning's JSON line names the Unlock call's trace and span.
        let (trace_id, span_id) = (hex(&unlock[0].trace_id), hex(&unlock[0].span_id));
        let line = master
            .process
            .output()
            .into_iter()
            .find(|line| line.contains("wrong authorisation code"))
            .expect("the wrong code is logged");
        let logged: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(logged["span"]["trace_id"], trace_id.as_str(), "{line}");
        assert_eq!(logged["span"]["span_id"], span_id.as_str(), "{line}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parent_and_child(
    spans: &[Span],
    parent_service: &str,
    parent_name: &str,
    child_service: &str,
    child_name: &str,
) -> Option<(Span, Span)> {
    spans
        .iter()
        .filter(|s| s.service == parent_service && s.name == parent_name)
        .find_map(|parent| {
            spans
                .iter()
                .find(|c| {
                    c.service == child_service
                        && c.name == child_name
                        && c.trace_id == parent.trace_id
                        && c.parent_span_id == parent.span_id
                })
                .map(|child| (parent.clone(), child.clone()))
        })
}

fn has(point: &Point, wanted: &[(&str, &str)]) -> bool {
    let attrs: &BTreeMap<String, String> = &point.attributes;
    wanted
        .iter()
        .all(|(k, v)| attrs.get(*k).map(String::as_str) == Some(*v))
}

/// Site 3 sends a stock line of `store_id` (not its store); returns the
/// status that ends its stream.
async fn push_foreign_batch(url: &str, store_id: &str, item_id: &str) -> tonic::Status {
    let mut session = raw::open(url, "3", SYNC_USER, SYNC_PASSWORD, raw::hello(3))
        .await
        .unwrap();
    let seq = session.welcome.upstream_acked_seq + 1;
    session
        .push(seq, vec![raw::stock_line(store_id, item_id)])
        .await;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match session.inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the master answers a foreign batch promptly")
}

/// A master-data write and the downstream batch that carries it to a site
/// are linked: the batch's `sync.downstream.send` span links to the span of
/// the call that wrote the change (here continuing the caller's trace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_batch_links_to_the_writes_it_carries() {
    const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const CALLER_SPAN: &str = "b7ad6b7169203331";
    for backend in backends("a_downstream_batch_links_to_the_writes_it_carries") {
        let receiver = OtlpReceiver::start().await;
        let endpoint = receiver.endpoint();
        let master_db = TestDb::new(backend);
        let master = Master::start(
            &master_db,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ],
        );
        master.add_site(2).await;
        let satellite = Satellite::start(&master.url(), 2, "streaming", &[]);
        satellite.wait_initialised(LIMIT).await;

        let mut traced = tonic::Request::new(pb::UpsertItemRequest {
            item: Some(pb::Item {
                code: "LINKED".into(),
                name: "Linked change".into(),
                unit: "tab".into(),
                default_pack_size: 10,
                active: true,
                ..Default::default()
            }),
        });
        traced.metadata_mut().insert(
            "traceparent",
            format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
                .parse()
                .unwrap(),
        );
        master
            .master_data()
            .await
            .upsert_item(traced)
            .await
            .unwrap();

        let (write, send) = eventually(
            LIMIT,
            "the write's span and a batch linked to it",
            || async {
                let spans = receiver.spans();
                let write = spans
                    .iter()
                    .find(|s| {
                        s.name == "storesync.v1.MasterDataService/UpsertItem"
                            && hex(&s.trace_id) == CALLER_TRACE
                    })
                    .cloned()?;
                let send = spans
                    .iter()
                    .find(|s| {
                        s.name == "sync.downstream.send"
                            && s.links.iter().any(|(trace, _)| hex(trace) == CALLER_TRACE)
                    })
                    .cloned()?;
                Some((write, send))
            },
        )
        .await;
        assert_eq!(send.service, "master-service");
        assert_ne!(
            hex(&send.trace_id),
            CALLER_TRACE,
            "the batch has its own trace, linked, not a child"
        );
        let (_, linked_span) = send
            .links
            .iter()
            .find(|(trace, _)| hex(trace) == CALLER_TRACE)
            .unwrap();
        assert_eq!(
            hex(linked_span),
            hex(&write.span_id),
            "the link names the call that wrote the change: {send:?}"
        );
    }
}
