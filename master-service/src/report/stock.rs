//! Stock across stores: on hand per item and store, and batches expiring soon.
//!
//! One aggregate or filtered statement per page (plus one for the page's item
//! totals), keyset-paged on the sort order, so a report reads only what its
//! page needs however many stores and stock lines there are.

use std::collections::HashMap;

use sea_orm::ConnectionTrait;
use storesync_shared::proto::v1 as pb;
use storesync_shared::store_ops::{next_token, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use storesync_shared::validate;

use super::query::{check_item_ids, check_store_ids, decode_token, encode_token, Sql};
use crate::error::Result;

/// Per stock line: packs left, and the units they hold.
const PACKS: &str = "s.total_number_of_packs";
const UNITS: &str = "s.total_number_of_packs * s.pack_size";

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

    let mut sql = Sql::new(db.get_database_backend());
    sql.push("SELECT * FROM (");
    if request.include_zero {
        // Every selected item with every selected store, stock or not.
        sql.push(
            "SELECT i.id AS item_id, i.code AS item_code, i.name AS item_name, \
             st.id AS store_id, st.code AS store_code, \
             COALESCE(a.packs, CAST(0 AS DOUBLE PRECISION)) AS packs, \
             COALESCE(a.units, CAST(0 AS DOUBLE PRECISION)) AS units, \
             COALESCE(a.batches, 0) AS batches, a.earliest_expiry AS earliest_expiry \
             FROM (",
        );
        // Only the items this page can reach: rows go in (item code, store
        // code) order and every item has a row per store, so the next
        // page_size + 1 items by code cover the page. Without this the cross
        // join and the aggregate would cover every item of the catalogue.
        push_page_items(
            &mut sql,
            request,
            after.as_ref(),
            page_size,
            "id, code, name",
        );
        sql.push(") i CROSS JOIN store st LEFT JOIN (");
        push_aggregate(&mut sql, request);
        sql.push(" AND s.item_id IN (");
        push_page_items(&mut sql, request, after.as_ref(), page_size, "id");
        sql.push(")");
        sql.push(" GROUP BY s.item_id, s.store_id");
        sql.push(") a ON a.item_id = i.id AND a.store_id = st.id WHERE 1 = 1");
        if !request.store_ids.is_empty() {
            sql.push(" AND st.id IN ").bind_list(&request.store_ids);
        }
    } else {
        sql.push(&format!(
            "SELECT i.id AS item_id, i.code AS item_code, i.name AS item_name, \
             st.id AS store_id, st.code AS store_code, \
             SUM({PACKS}) AS packs, SUM({UNITS}) AS units, COUNT(*) AS batches, \
             MIN(NULLIF(s.expiry_date, '')) AS earliest_expiry \
             FROM stock_line s JOIN item i ON i.id = s.item_id JOIN store st ON st.id = s.store_id \
             WHERE s.total_number_of_packs > 0"
        ));
        push_item_store_filters(&mut sql, request, "i", "st");
        sql.push(" GROUP BY i.id, i.code, i.name, st.id, st.code");
    }
    sql.push(") t");
    if let Some(key) = after {
        sql.push(" WHERE t.item_code > ")
            .bind(key[0].clone())
            .push(" OR (t.item_code = ")
            .bind(key[0].clone())
            .push(" AND t.store_code > ")
            .bind(key[1].clone())
            .push(")");
    }
    sql.push(" ORDER BY t.item_code, t.store_code LIMIT ")
        .bind(i64::try_from(page_size + 1).unwrap_or(i64::MAX));

    let mut rows = db
        .query_all(sql.build())
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

/// The start of the aggregate of the selected stock lines with packs left
/// (packs, units, batches, earliest expiry per item and store); the caller
/// adds its conditions and the `GROUP BY`, then joins it to the item-store pairs.
fn push_aggregate(sql: &mut Sql, request: &pb::StockOnHandRequest) {
    sql.push(&format!(
        "SELECT s.item_id, s.store_id, SUM({PACKS}) AS packs, SUM({UNITS}) AS units, \
         COUNT(*) AS batches, MIN(NULLIF(s.expiry_date, '')) AS earliest_expiry \
         FROM stock_line s WHERE s.total_number_of_packs > 0"
    ));
    if !request.item_ids.is_empty() {
        sql.push(" AND s.item_id IN ").bind_list(&request.item_ids);
    }
    if !request.store_ids.is_empty() {
        sql.push(" AND s.store_id IN ")
            .bind_list(&request.store_ids);
    }
}

/// `SELECT <columns> FROM item …` of the items (filtered) from the page
/// token's item code on, in code order, at most `page_size + 1` of them.
fn push_page_items(
    sql: &mut Sql,
    request: &pb::StockOnHandRequest,
    after: Option<&Vec<String>>,
    page_size: u64,
    columns: &str,
) {
    sql.push(&format!("SELECT {columns} FROM item ip WHERE 1 = 1"));
    if !request.item_ids.is_empty() {
        sql.push(" AND ip.id IN ").bind_list(&request.item_ids);
    }
    if !request.item_code_prefix.is_empty() {
        let length = i32::try_from(request.item_code_prefix.chars().count()).unwrap_or(i32::MAX);
        sql.push(" AND substr(ip.code, 1, ")
            .bind(length)
            .push(") = ")
            .bind(request.item_code_prefix.clone());
    }
    if let Some(key) = after {
        sql.push(" AND ip.code >= ").bind(key[0].clone());
    }
    sql.push(" ORDER BY ip.code LIMIT ")
        .bind(i64::try_from(page_size + 1).unwrap_or(i64::MAX));
}

/// ` AND …` for the item, prefix and store filters on aliases `i` and `st`.
fn push_item_store_filters(sql: &mut Sql, request: &pb::StockOnHandRequest, i: &str, st: &str) {
    if !request.item_ids.is_empty() {
        sql.push(&format!(" AND {i}.id IN "))
            .bind_list(&request.item_ids);
    }
    if !request.store_ids.is_empty() {
        sql.push(&format!(" AND {st}.id IN "))
            .bind_list(&request.store_ids);
    }
    if !request.item_code_prefix.is_empty() {
        let length = i32::try_from(request.item_code_prefix.chars().count()).unwrap_or(i32::MAX);
        sql.push(&format!(" AND substr({i}.code, 1, "))
            .bind(length)
            .push(") = ")
            .bind(request.item_code_prefix.clone());
    }
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
    let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
    let mut sql = Sql::new(db.get_database_backend());
    sql.push(&format!(
        "SELECT s.item_id AS item_id, SUM({PACKS}) AS packs, SUM({UNITS}) AS units, \
         COUNT(*) AS batches FROM stock_line s WHERE s.total_number_of_packs > 0 AND s.item_id IN "
    ))
    .bind_list(&ids);
    if !request.store_ids.is_empty() {
        sql.push(" AND s.store_id IN ")
            .bind_list(&request.store_ids);
    }
    sql.push(" GROUP BY s.item_id");
    let mut sums: HashMap<String, (f64, f64, i64)> = HashMap::new();
    for row in db.query_all(sql.build()).await? {
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

    let mut sql = Sql::new(db.get_database_backend());
    sql.push(&format!(
        "SELECT s.id AS id, s.store_id AS store_id, st.code AS store_code, s.item_id AS item_id, \
         i.code AS item_code, i.name AS item_name, s.batch AS batch, s.expiry_date AS expiry_date, \
         {UNITS} AS units, s.total_number_of_packs * s.cost_price_per_pack AS cost_value \
         FROM stock_line s JOIN store st ON st.id = s.store_id JOIN item i ON i.id = s.item_id \
         WHERE s.total_number_of_packs > 0 AND s.expiry_date <> '' AND s.expiry_date < "
    ))
    .bind(request.before.clone());
    if !request.store_ids.is_empty() {
        sql.push(" AND s.store_id IN ")
            .bind_list(&request.store_ids);
    }
    if let Some(key) = after {
        sql.push(" AND (s.expiry_date > ")
            .bind(key[0].clone())
            .push(" OR (s.expiry_date = ")
            .bind(key[0].clone())
            .push(" AND s.id > ")
            .bind(key[1].clone())
            .push("))");
    }
    sql.push(" ORDER BY s.expiry_date, s.id LIMIT ")
        .bind(i64::try_from(page_size + 1).unwrap_or(i64::MAX));
    let mut rows = db
        .query_all(sql.build())
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
