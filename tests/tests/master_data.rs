//! MasterDataService end to end: items and names, their validation, unique
//! codes, references from store data, paging, and the change log behind them.
#![allow(clippy::unwrap_used)]

use storesync_shared::proto::v1 as pb;
use storesync_tests::master::{
    assert_status, change_log, item, name, plant_invoice, plant_stock_line, Master,
};
use storesync_tests::{backends, TestDb};
use tonic::Code;

#[tokio::test]
async fn items_are_validated_unique_guarded_and_logged() {
    for backend in backends("items_are_validated_unique_guarded_and_logged") {
        let db = TestDb::new(backend);
        let master = Master::spawn(&db).await;
        let conn = db.connect().await;
        let mut client = master.master_data();
        let log_before = change_log(&conn).await.len();
        let upsert = |item: pb::Item| pb::UpsertItemRequest { item: Some(item) };

        // Validation names the field.
        assert_status(
            client
                .upsert_item(pb::UpsertItemRequest { item: None })
                .await,
            Code::InvalidArgument,
            "item",
        );
        for (bad, field) in [
            (
                pb::Item {
                    code: String::new(),
                    ..item("A")
                },
                "item.code",
            ),
            (
                pb::Item {
                    code: "has space".into(),
                    ..item("A")
                },
                "item.code",
            ),
            (
                pb::Item {
                    name: String::new(),
                    ..item("A")
                },
                "item.name",
            ),
            (
                pb::Item {
                    unit: String::new(),
                    ..item("A")
                },
                "item.unit",
            ),
            (
                pb::Item {
                    default_pack_size: 0,
                    ..item("A")
                },
                "item.default_pack_size",
            ),
            (
                pb::Item {
                    id: "not-a-uuid".into(),
                    ..item("A")
                },
                "item.id",
            ),
        ] {
            assert_status(
                client.upsert_item(upsert(bad)).await,
                Code::InvalidArgument,
                field,
            );
        }

        // Create, read, replace.
        let created = client
            .upsert_item(upsert(item("AMOX250")))
            .await
            .unwrap()
            .into_inner()
            .item
            .unwrap();
        uuid::Uuid::parse_str(&created.id).unwrap();
        assert!(created.updated_at_ms > 0);
        let got = client
            .get_item(pb::GetItemRequest {
                id: created.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, created);
        let replaced = client
            .upsert_item(upsert(pb::Item {
                id: created.id.clone(),
                name: "Amoxicillin 250 mg".into(),
                active: false,
                ..item("AMOX250")
            }))
            .await
            .unwrap()
            .into_inner()
            .item
            .unwrap();
        assert_eq!(replaced.id, created.id);
        assert_eq!(replaced.name, "Amoxicillin 250 mg");

        // Unique codes, unknown and malformed ids.
        assert_status(
            client.upsert_item(upsert(item("AMOX250"))).await,
            Code::AlreadyExists,
            "item.code",
        );
        let other = client
            .upsert_item(upsert(item("PARA500")))
            .await
            .unwrap()
            .into_inner()
            .item
            .unwrap();
        assert_status(
            client
                .upsert_item(upsert(pb::Item {
                    id: other.id.clone(),
                    ..item("AMOX250")
                }))
                .await,
            Code::AlreadyExists,
            "item.code",
        );
        let unknown = uuid::Uuid::new_v4().to_string();
        assert_status(
            client
                .upsert_item(upsert(pb::Item {
                    id: unknown.clone(),
                    ..item("NEW")
                }))
                .await,
            Code::NotFound,
            "item.id",
        );
        assert_status(
            client
                .get_item(pb::GetItemRequest {
                    id: unknown.clone(),
                })
                .await,
            Code::NotFound,
            &unknown,
        );
        assert_status(
            client.get_item(pb::GetItemRequest { id: "x".into() }).await,
            Code::InvalidArgument,
            "id",
        );

        // An item in store data cannot be deleted; an unused one can.
        plant_stock_line(&conn, &uuid::Uuid::new_v4().to_string(), &created.id).await;
        assert_status(
            client
                .delete_item(pb::DeleteItemRequest {
                    id: created.id.clone(),
                })
                .await,
            Code::FailedPrecondition,
            "1 stock line",
        );
        client
            .delete_item(pb::DeleteItemRequest {
                id: other.id.clone(),
            })
            .await
            .unwrap();
        assert_status(
            client
                .get_item(pb::GetItemRequest {
                    id: other.id.clone(),
                })
                .await,
            Code::NotFound,
            "",
        );
        assert_status(
            client
                .delete_item(pb::DeleteItemRequest {
                    id: other.id.clone(),
                })
                .await,
            Code::NotFound,
            "",
        );

        // Every change is in the change log, in order, the delete as a tombstone.
        let log: Vec<_> = change_log(&conn)
            .await
            .into_iter()
            .skip(log_before)
            .collect();
        assert_eq!(log.len(), 4, "{log:?}");
        assert!(log.iter().all(|e| e.table_name == "ITEM"));
        match &log[1].record.record {
            Some(pb::sync_record::Record::Item(logged)) => assert_eq!(logged, &replaced),
            other => panic!("unexpected {other:?}"),
        }
        let tombstone = &log[3];
        assert!(tombstone.deleted && tombstone.record_id == other.id);
        match &tombstone.record.record {
            Some(pb::sync_record::Record::Deleted(r)) => {
                assert_eq!(
                    (r.table(), r.id.as_str()),
                    (pb::Table::Item, other.id.as_str())
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn names_are_validated_unique_guarded_and_logged() {
    for backend in backends("names_are_validated_unique_guarded_and_logged") {
        let db = TestDb::new(backend);
        let master = Master::spawn(&db).await;
        let conn = db.connect().await;
        let mut client = master.master_data();
        let upsert = |name: pb::Name| pb::UpsertNameRequest { name: Some(name) };

        for (bad, field) in [
            (
                pb::Name {
                    code: String::new(),
                    ..name("C1")
                },
                "name.code",
            ),
            (
                pb::Name {
                    name: " ".into(),
                    ..name("C1")
                },
                "name.name",
            ),
            (
                pb::Name {
                    id: "bad".into(),
                    ..name("C1")
                },
                "name.id",
            ),
        ] {
            assert_status(
                client.upsert_name(upsert(bad)).await,
                Code::InvalidArgument,
                field,
            );
        }
        let customer = client
            .upsert_name(upsert(name("CLINIC1")))
            .await
            .unwrap()
            .into_inner()
            .name
            .unwrap();
        let supplier = client
            .upsert_name(upsert(pb::Name {
                is_supplier: true,
                is_customer: false,
                ..name("SUPP1")
            }))
            .await
            .unwrap()
            .into_inner()
            .name
            .unwrap();
        assert_eq!(
            client
                .get_name(pb::GetNameRequest {
                    id: supplier.id.clone()
                })
                .await
                .unwrap()
                .into_inner(),
            supplier
        );
        assert_status(
            client.upsert_name(upsert(name("CLINIC1"))).await,
            Code::AlreadyExists,
            "name.code",
        );
        // The master's store is a name too: its code is taken, and it cannot be deleted.
        let store_name = client
            .list_names(pb::ListNamesRequest {
                code_prefix: "HQ".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .names
            .pop()
            .unwrap();
        assert!(store_name.is_store);
        assert_status(
            client.upsert_name(upsert(name("HQ"))).await,
            Code::AlreadyExists,
            "name.code",
        );
        assert_status(
            client
                .delete_name(pb::DeleteNameRequest {
                    id: store_name.id.clone(),
                })
                .await,
            Code::FailedPrecondition,
            "store",
        );

        // A name on an invoice cannot be deleted.
        plant_invoice(&conn, &store_name.id, &customer.id).await;
        assert_status(
            client
                .delete_name(pb::DeleteNameRequest {
                    id: customer.id.clone(),
                })
                .await,
            Code::FailedPrecondition,
            "1 invoice",
        );
        client
            .delete_name(pb::DeleteNameRequest {
                id: supplier.id.clone(),
            })
            .await
            .unwrap();
        assert_status(
            client
                .get_name(pb::GetNameRequest {
                    id: supplier.id.clone(),
                })
                .await,
            Code::NotFound,
            "",
        );

        let log = change_log(&conn).await;
        let last = log.last().unwrap();
        assert!(last.deleted && last.record_id == supplier.id && last.table_name == "NAME");
        assert!(log.iter().any(|e| e.record_id == customer.id && !e.deleted));
    }
}

#[tokio::test]
async fn lists_page_by_code_with_filters() {
    for backend in backends("lists_page_by_code_with_filters") {
        let db = TestDb::new(backend);
        let master = Master::spawn(&db).await;
        let mut client = master.master_data();
        let codes = ["B-2", "A_1", "C3", "A_2", "B-1", "D4", "A_3"];
        for code in codes {
            let mut it = item(code);
            it.active = code != "B-1";
            client
                .upsert_item(pb::UpsertItemRequest { item: Some(it) })
                .await
                .unwrap();
        }
        let list = |page_size: u32, page_token: String, code_prefix: &str, active_only: bool| {
            pb::ListItemsRequest {
                page_size,
                page_token,
                code_prefix: code_prefix.into(),
                active_only,
            }
        };
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = client
                .list_items(list(3, token, "", false))
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(page.items.len() <= 3);
            seen.extend(page.items.into_iter().map(|i| i.code));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(pages, 3);
        let mut sorted: Vec<String> = codes.iter().map(|c| (*c).to_owned()).collect();
        sorted.sort();
        assert_eq!(seen, sorted, "every item once, ordered by code");

        let prefixed = client
            .list_items(list(0, String::new(), "A_", false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            prefixed
                .items
                .iter()
                .map(|i| i.code.as_str())
                .collect::<Vec<_>>(),
            ["A_1", "A_2", "A_3"]
        );
        assert!(prefixed.next_page_token.is_empty());
        let active = client
            .list_items(list(0, String::new(), "B", true))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            active
                .items
                .iter()
                .map(|i| i.code.as_str())
                .collect::<Vec<_>>(),
            ["B-2"]
        );

        assert_status(
            client
                .list_items(list(1001, String::new(), "", false))
                .await,
            Code::InvalidArgument,
            "page_size",
        );
        assert_status(
            client.list_items(list(0, "zz".into(), "", false)).await,
            Code::InvalidArgument,
            "page_token",
        );

        // Names page the same way (the master's store name is one of them).
        for code in ["N1", "N2", "N3"] {
            client
                .upsert_name(pb::UpsertNameRequest {
                    name: Some(name(code)),
                })
                .await
                .unwrap();
        }
        let first = client
            .list_names(pb::ListNamesRequest {
                page_size: 2,
                code_prefix: "N".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.names.len(), 2);
        let second = client
            .list_names(pb::ListNamesRequest {
                page_size: 2,
                code_prefix: "N".into(),
                page_token: first.next_page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            second
                .names
                .iter()
                .map(|n| n.code.as_str())
                .collect::<Vec<_>>(),
            ["N3"]
        );
        assert!(second.next_page_token.is_empty());
    }
}

#[tokio::test]
async fn concurrent_writers_leave_no_gap_in_the_change_log() {
    for backend in backends("concurrent_writers_leave_no_gap_in_the_change_log") {
        let db = TestDb::new(backend);
        let master = Master::spawn(&db).await;
        let writers: Vec<_> = (0..24)
            .map(|n| {
                let mut client = master.master_data();
                tokio::spawn(async move {
                    client
                        .upsert_item(pb::UpsertItemRequest {
                            item: Some(item(&format!("CONC{n:02}"))),
                        })
                        .await
                        .unwrap();
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let log = change_log(&db.connect().await).await;
        let seqs: Vec<i64> = log.iter().map(|e| e.seq).collect();
        let expected: Vec<i64> = (1..=i64::try_from(log.len()).unwrap()).collect();
        assert_eq!(seqs, expected, "sequence numbers are dense from 1");
        assert_eq!(log.iter().filter(|e| e.table_name == "ITEM").count(), 24);
    }
}
