//! Stock across stores: on hand per item and store, and batches expiring soon.
//!
//! One aggregate or filtered statement per page (plus one for the page's item
//! totals), keyset-paged on the sort order, so a report reads only what its
//! page needs however many stores and stock lines there are.

use std::collections::HashMap;

use sea_orm::sea_query::{
    Asterisk, Condition, Func, JoinType, Order, Query, SelectStatement, SimpleExpr,
};
use sea_orm::ConnectionTrait;
use storesync_shared::domain::master_data_read::starts_with;
use storesync_shared::domain::store_ops::{next_token, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use storesync_shared::domain::validate;
use storesync_shared::proto::v1 as pb;

use super::query::{
    after_key, check_item_ids, check_store_ids, col, count_all, decode_token, encode_token,
    literal, name, query_all, zero_real,
};
use crate::error::Result;

/// Per stock line of `stock_line s`: packs left.
fn packs() -> SimpleExpr {
    col("s", "total_number_of_packs").into()
}

/// Per stock line of `stock_line s`: the units its packs hold.
fn units() -> SimpleExpr {
    col("s", "total_number_of_packs").mul(col("s", "pack_size"))
}

/// Stock lines of `stock_line s` that have packs left.
fn with_stock() -> SimpleExpr {
    col("s", "total_number_of_packs").gt(literal(0))
}

/// `MIN(NULLIF(s.expiry_date, ''))`: the earliest expiry of a group of stock
/// lines, lines without one left out.
fn earliest_expiry() -> SimpleExpr {
    Func::min(Func::cust(name("NULLIF")).args([col("s", "expiry_date").into(), literal("")])).into()
}

/// `ids` as bound values, for `IN`.
fn ids(ids: &[String]) -> impl Iterator<Item = String> + '_ {
    ids.iter().cloned()
}

/// Stock on hand per item and store (see `ReportService.StockOnHand`).
pub async fn stock_on_hand<C: ConnectionTrait>(
    db: &C,
    request: &pb::StockOnHandRequest,
) -> Result<pb::StockOnHandResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    validate::optional_text("item_code_prefix", &request.item_code_prefix, 64)?;
    let after = decode_token("soh", &request.page_token, 2)?;
    check_item_ids(db, "item_ids", &request.item_ids).await?;
    check_store_ids(db, "store_ids", &request.store_ids).await?;

    let rows_of_page = if request.include_zero {
        // Every selected item with every selected store, stock or not.
        let mut pairs = Query::select();
        pairs
            .expr_as(col("i", "id"), name("item_id"))
            .expr_as(col("i", "code"), name("item_code"))
            .expr_as(col("i", "name"), name("item_name"))
            .expr_as(col("st", "id"), name("store_id"))
            .expr_as(col("st", "code"), name("store_code"))
            .expr_as(
                Func::coalesce([col("a", "packs").into(), zero_real()]),
                name("packs"),
            )
            .expr_as(
                Func::coalesce([col("a", "units").into(), zero_real()]),
                name("units"),
            )
            .expr_as(
                Func::coalesce([col("a", "batches").into(), literal(0)]),
                name("batches"),
            )
            .expr_as(col("a", "earliest_expiry"), name("earliest_expiry"))
            // Only the items this page can reach: rows go in (item code,
            // store code) order and every item has a row per store, so the
            // next page_size + 1 items by code cover the page. Without this
            // the cross join and the aggregate would cover every item of the
            // catalogue.
            .from_subquery(
                page_items(request, after.as_ref(), page_size, &["id", "code", "name"]),
                name("i"),
            )
            // A cross join: sea-query writes every join with its `ON`, which
            // PostgreSQL refuses after `CROSS JOIN`; `ON TRUE` is the same.
            .join_as(
                JoinType::InnerJoin,
                name("store"),
                name("st"),
                Condition::all(),
            )
            .join_subquery(
                JoinType::LeftJoin,
                page_aggregate(request, after.as_ref(), page_size),
                name("a"),
                Condition::all()
                    .add(col("a", "item_id").equals((name("i"), name("id"))))
                    .add(col("a", "store_id").equals((name("st"), name("id")))),
            );
        if !request.store_ids.is_empty() {
            pairs.and_where(col("st", "id").is_in(ids(&request.store_ids)));
        }
        pairs
    } else {
        let mut stocked = Query::select();
        stocked
            .expr_as(col("i", "id"), name("item_id"))
            .expr_as(col("i", "code"), name("item_code"))
            .expr_as(col("i", "name"), name("item_name"))
            .expr_as(col("st", "id"), name("store_id"))
            .expr_as(col("st", "code"), name("store_code"))
            .expr_as(Func::sum(packs()), name("packs"))
            .expr_as(Func::sum(units()), name("units"))
            .expr_as(count_all(), name("batches"))
            .expr_as(earliest_expiry(), name("earliest_expiry"))
            .from_as(name("stock_line"), name("s"))
            .join_as(
                JoinType::InnerJoin,
                name("item"),
                name("i"),
                col("i", "id").equals((name("s"), name("item_id"))),
            )
            .join_as(
                JoinType::InnerJoin,
                name("store"),
                name("st"),
                col("st", "id").equals((name("s"), name("store_id"))),
            )
            .and_where(with_stock());
        if !request.item_ids.is_empty() {
            stocked.and_where(col("i", "id").is_in(ids(&request.item_ids)));
        }
        if !request.store_ids.is_empty() {
            stocked.and_where(col("st", "id").is_in(ids(&request.store_ids)));
        }
        if !request.item_code_prefix.is_empty() {
            stocked.and_where(starts_with(
                col("i", "code").into(),
                &request.item_code_prefix,
            ));
        }
        stocked.group_by_columns([
            (name("i"), name("id")),
            (name("i"), name("code")),
            (name("i"), name("name")),
            (name("st"), name("id")),
            (name("st"), name("code")),
        ]);
        stocked
    };
    let mut page = Query::select();
    page.column(Asterisk).from_subquery(rows_of_page, name("t"));
    if let Some(key) = &after {
        page.cond_where(after_key(
            &[col("t", "item_code"), col("t", "store_code")],
            &[key[0].clone().into(), key[1].clone().into()],
        ));
    }
    page.order_by((name("t"), name("item_code")), Order::Asc)
        .order_by((name("t"), name("store_code")), Order::Asc)
        .limit(page_size + 1);

    let mut rows = query_all(db, &page)
        .await?
        .into_iter()
        .map(|row| -> Result<pb::StockOnHandRow> {
            Ok(pb::StockOnHandRow {
                item_id: row.try_get("", "item_id")?,
                item_code: row.try_get("", "item_code")?,
                item_name: row.try_get("", "item_name")?,
                store_id: row.try_get("", "store_id")?,
                store_code: row.try_get("", "store_code")?,
                packs_on_hand: row.try_get("", "packs")?,
                units_on_hand: row.try_get("", "units")?,
                batches: u32::try_from(row.try_get::<i64>("", "batches")?).unwrap_or(u32::MAX),
                earliest_expiry: row
                    .try_get::<Option<String>>("", "earliest_expiry")?
                    .unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next_page_token = next_token(&mut rows, page_size, |last| {
        encode_token("soh", &[last.item_code.clone(), last.store_code.clone()])
    });
    let totals = item_totals(db, request, &rows).await?;
    Ok(pb::StockOnHandResponse {
        rows,
        totals,
        next_page_token,
    })
}

/// The aggregate of the selected stock lines with packs left of the items
/// this page can reach (packs, units, batches, earliest expiry per item and
/// store), to be joined to the item-store pairs.
fn page_aggregate(
    request: &pb::StockOnHandRequest,
    after: Option<&Vec<String>>,
    page_size: u64,
) -> SelectStatement {
    let mut aggregate = Query::select();
    aggregate
        .column((name("s"), name("item_id")))
        .column((name("s"), name("store_id")))
        .expr_as(Func::sum(packs()), name("packs"))
        .expr_as(Func::sum(units()), name("units"))
        .expr_as(count_all(), name("batches"))
        .expr_as(earliest_expiry(), name("earliest_expiry"))
        .from_as(name("stock_line"), name("s"))
        .and_where(with_stock());
    if !request.item_ids.is_empty() {
        aggregate.and_where(col("s", "item_id").is_in(ids(&request.item_ids)));
    }
    if !request.store_ids.is_empty() {
        aggregate.and_where(col("s", "store_id").is_in(ids(&request.store_ids)));
    }
    aggregate
        .and_where(col("s", "item_id").in_subquery(page_items(request, after, page_size, &["id"])))
        .group_by_columns([(name("s"), name("item_id")), (name("s"), name("store_id"))]);
    aggregate
}

/// `SELECT <columns> FROM item ip …` of the items (filtered) from the page
/// token's item code on, in code order, at most `page_size + 1` of them.
fn page_items(
    request: &pb::StockOnHandRequest,
    after: Option<&Vec<String>>,
    page_size: u64,
    columns: &[&str],
) -> SelectStatement {
    let mut items = Query::select();
    for column in columns {
        items.column((name("ip"), name(column)));
    }
    items.from_as(name("item"), name("ip"));
    if !request.item_ids.is_empty() {
        items.and_where(col("ip", "id").is_in(ids(&request.item_ids)));
    }
    if !request.item_code_prefix.is_empty() {
        items.and_where(starts_with(
            col("ip", "code").into(),
            &request.item_code_prefix,
        ));
    }
    if let Some(key) = after {
        items.and_where(col("ip", "code").gte(key[0].clone()));
    }
    items
        .order_by((name("ip"), name("code")), Order::Asc)
        .limit(page_size + 1);
    items
}

/// Totals across the selected stores of the items on this page, in page order.
async fn item_totals<C: ConnectionTrait>(
    db: &C,
    request: &pb::StockOnHandRequest,
    rows: &[pb::StockOnHandRow],
) -> Result<Vec<pb::ItemTotal>> {
    let mut items: Vec<(String, String)> = Vec::new();
    for row in rows {
        if items.last().map(|(id, _)| id) != Some(&row.item_id) {
            items.push((row.item_id.clone(), row.item_code.clone()));
        }
    }
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut totals = Query::select();
    totals
        .expr_as(col("s", "item_id"), name("item_id"))
        .expr_as(Func::sum(packs()), name("packs"))
        .expr_as(Func::sum(units()), name("units"))
        .expr_as(count_all(), name("batches"))
        .from_as(name("stock_line"), name("s"))
        .and_where(with_stock())
        .and_where(col("s", "item_id").is_in(items.iter().map(|(id, _)| id.clone())));
    if !request.store_ids.is_empty() {
        totals.and_where(col("s", "store_id").is_in(ids(&request.store_ids)));
    }
    totals.group_by_col((name("s"), name("item_id")));
    let mut sums: HashMap<String, (f64, f64, i64)> = HashMap::new();
    for row in query_all(db, &totals).await? {
        sums.insert(
            row.try_get("", "item_id")?,
            (
                row.try_get("", "packs")?,
                row.try_get("", "units")?,
                row.try_get("", "batches")?,
            ),
        );
    }
    Ok(items
        .into_iter()
        .map(|(item_id, item_code)| {
            let (packs, units, batches) = sums.get(&item_id).copied().unwrap_or((0.0, 0.0, 0));
            pb::ItemTotal {
                item_id,
                item_code,
                units_on_hand: units,
                packs_on_hand: packs,
                batches: u32::try_from(batches).unwrap_or(u32::MAX),
            }
        })
        .collect())
}

/// Batches with packs left expiring before `before`, soonest first (see
/// `ReportService.ExpiringStock`).
pub async fn expiring_stock<C: ConnectionTrait>(
    db: &C,
    request: &pb::ExpiringStockRequest,
) -> Result<pb::ExpiringStockResponse> {
    if request.before.is_empty() {
        return Err(crate::Error::invalid(
            "before",
            "is required: batches expiring before this date (YYYY-MM-DD) are listed",
        ));
    }
    validate::date("before", &request.before, false)?;
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let after = decode_token("exp", &request.page_token, 2)?;
    check_store_ids(db, "store_ids", &request.store_ids).await?;

    let mut expiring = Query::select();
    expiring
        .expr_as(col("s", "id"), name("id"))
        .expr_as(col("s", "store_id"), name("store_id"))
        .expr_as(col("st", "code"), name("store_code"))
        .expr_as(col("s", "item_id"), name("item_id"))
        .expr_as(col("i", "code"), name("item_code"))
        .expr_as(col("i", "name"), name("item_name"))
        .expr_as(col("s", "batch"), name("batch"))
        .expr_as(col("s", "expiry_date"), name("expiry_date"))
        .expr_as(units(), name("units"))
        .expr_as(
            col("s", "total_number_of_packs").mul(col("s", "cost_price_per_pack")),
            name("cost_value"),
        )
        .from_as(name("stock_line"), name("s"))
        .join_as(
            JoinType::InnerJoin,
            name("store"),
            name("st"),
            col("st", "id").equals((name("s"), name("store_id"))),
        )
        .join_as(
            JoinType::InnerJoin,
            name("item"),
            name("i"),
            col("i", "id").equals((name("s"), name("item_id"))),
        )
        .and_where(with_stock())
        .and_where(col("s", "expiry_date").ne(literal("")))
        .and_where(col("s", "expiry_date").lt(request.before.clone()));
    if !request.store_ids.is_empty() {
        expiring.and_where(col("s", "store_id").is_in(ids(&request.store_ids)));
    }
    if let Some(key) = &after {
        expiring.cond_where(after_key(
            &[col("s", "expiry_date"), col("s", "id")],
            &[key[0].clone().into(), key[1].clone().into()],
        ));
    }
    expiring
        .order_by((name("s"), name("expiry_date")), Order::Asc)
        .order_by((name("s"), name("id")), Order::Asc)
        .limit(page_size + 1);
    let mut rows = query_all(db, &expiring)
        .await?
        .into_iter()
        .map(|row| -> Result<pb::ExpiringStockRow> {
            Ok(pb::ExpiringStockRow {
                stock_line_id: row.try_get("", "id")?,
                store_id: row.try_get("", "store_id")?,
                store_code: row.try_get("", "store_code")?,
                item_id: row.try_get("", "item_id")?,
                item_code: row.try_get("", "item_code")?,
                item_name: row.try_get("", "item_name")?,
                batch: row.try_get("", "batch")?,
                expiry_date: row.try_get("", "expiry_date")?,
                units: row.try_get("", "units")?,
                cost_value: row.try_get("", "cost_value")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next_page_token = next_token(&mut rows, page_size, |last| {
        encode_token(
            "exp",
            &[last.expiry_date.clone(), last.stock_line_id.clone()],
        )
    });
    Ok(pb::ExpiringStockResponse {
        rows,
        next_page_token,
    })
}
