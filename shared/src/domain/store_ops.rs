//! A store's own operations: the rules of stock and invoices.
//!
//! Used by the `StoreService` of every site (see [`crate::domain::store_service`]): a
//! satellite for the store it hosts, the master for its own store. Everything
//! here is generic over [`ConnectionTrait`], runs on SQLite and PostgreSQL, and
//! knows nothing of gRPC transport or of the sync stream.
//!
//! # Invariants
//! - **Nothing half-applied.** [`create_invoice`] does all its reads, checks
//!   and writes in the caller's transaction and returns every row it created or
//!   changed as [`SyncRecord`]s; the caller appends them to its outbox (a
//!   satellite) in that same transaction and commits once.
//! - **Stock never below zero.** Every line that takes stock is checked against
//!   the stock line as read inside the transaction, with several lines on one
//!   stock line added up. On PostgreSQL, invoice writes of one store take a
//!   transaction-scoped advisory lock first, so two concurrent invoices cannot
//!   both spend the same packs nor draw the same invoice number; SQLite has one
//!   writer at a time anyway.
//! - **Invoice numbers** are per store and kind: the highest so far plus one,
//!   read under that same lock.
//!
//! Reads ([`list_stock`], [`stock_on_hand`], ...) are set-based: one query per
//! call, aggregation in SQL.

use std::collections::{BTreeMap, HashMap};

use sea_orm::sea_query::{Alias, Expr, Func, JoinType, Order, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};

use crate::domain::convert::kind_to_str;
use crate::domain::entities::{invoice, invoice_line, item, name, stock_line};
use crate::domain::error::{Error, Result};
use crate::domain::validate;
use crate::proto::v1 as pb;
use crate::proto::v1::{sync_record, SyncRecord};

/// Most lines one invoice may have; more is a client bug, not a delivery.
pub const MAX_INVOICE_LINES: usize = 1000;
/// Longest free-text reference.
const MAX_REFERENCE_CHARS: usize = 256;
/// Longest batch text.
const MAX_BATCH_CHARS: usize = 64;
/// Stock arithmetic tolerance: packs are doubles (split packs exist), and
/// 0.1 + 0.2 - 0.3 must not count as "below zero".
const EPSILON: f64 = 1e-9;

/// What a line does to stock, after validation.
enum LineAction {
    /// Creates a new stock line (goods in).
    GoodsIn {
        item_id: String,
        batch: String,
        expiry_date: String,
        pack_size: i32,
        packs: f64,
        cost: f64,
        sell: f64,
    },
    /// Adds `delta` packs (negative: takes) to an existing stock line.
    Change {
        stock_line_id: String,
        item_id: String,
        delta: f64,
        sell: f64,
    },
}

/// Creates a finalised invoice for `store_id` and moves stock, all in `txn`.
///
/// Returns the answer for the caller and every row created or changed, as
/// sync upserts (stock lines, the invoice without nested lines, its lines), for
/// the outbox. On error nothing has been written that the caller could commit
/// by mistake: all checks run before the first write.
pub async fn create_invoice<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::CreateInvoiceRequest,
) -> Result<(pb::CreateInvoiceResponse, Vec<SyncRecord>)> {
    create_invoice_with(txn, store_id, request, None).await
}

/// The ids an invoice keeps when it is created again on another database of
/// the same store (a satellite's handover of unsent invoices): the invoice's,
/// each line's, and each goods-in line's new stock line's. The invoice number
/// and time are assigned as for any new invoice, and stock moves by the same
/// rules, so the result is as if it had been created here.
pub struct GivenIds {
    pub invoice_id: String,
    /// One per line, in line order.
    pub line_ids: Vec<String>,
    /// One per line, in line order; used by goods-in lines only.
    pub stock_line_ids: Vec<String>,
}

/// [`create_invoice`], keeping `given` ids when there are some.
pub async fn create_invoice_with<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    request: pb::CreateInvoiceRequest,
    given: Option<&GivenIds>,
) -> Result<(pb::CreateInvoiceResponse, Vec<SyncRecord>)> {
    let input = request
        .invoice
        .ok_or_else(|| Error::invalid("invoice", "is required"))?;
    let kind = match pb::InvoiceKind::try_from(input.kind) {
        Ok(
            kind @ (pb::InvoiceKind::SupplierInvoice
            | pb::InvoiceKind::CustomerInvoice
            | pb::InvoiceKind::InventoryAdjustment),
        ) => kind,
        _ => {
            return Err(Error::invalid(
                "invoice.kind",
                format!(
                    "must be SUPPLIER_INVOICE, CUSTOMER_INVOICE or INVENTORY_ADJUSTMENT, got {}",
                    input.kind
                ),
            ))
        }
    };
    // An adjustment may leave the other party out (the store adjusts itself).
    let name_optional = kind == pb::InvoiceKind::InventoryAdjustment && input.name_id.is_empty();
    if !name_optional {
        validate::uuid("invoice.name_id", &input.name_id)?;
    }
    validate::optional_text("invoice.reference", &input.reference, MAX_REFERENCE_CHARS)?;
    if input.lines.is_empty() {
        return Err(Error::invalid(
            "invoice.lines",
            "must hold at least one line",
        ));
    }
    if input.lines.len() > MAX_INVOICE_LINES {
        return Err(Error::invalid(
            "invoice.lines",
            format!(
                "has {} lines; at most {MAX_INVOICE_LINES} are allowed",
                input.lines.len()
            ),
        ));
    }
    let actions = input
        .lines
        .iter()
        .enumerate()
        .map(|(index, line)| validate_line(kind, index, line))
        .collect::<Result<Vec<_>>>()?;
    if let Some(given) = given {
        validate::uuid("invoice.id", &given.invoice_id)?;
        if given.line_ids.len() != actions.len() || given.stock_line_ids.len() != actions.len() {
            return Err(Error::invalid(
                "invoice.lines",
                "every line needs its id and stock line id when an invoice is created again",
            ));
        }
    }

    lock_store(txn, store_id).await?;

    // The other party: must exist, be active and fit the kind of invoice.
    if !name_optional {
        check_name(txn, kind, &input.name_id).await?;
    }

    // Stock lines the invoice changes, read in one query (this store only).
    let wanted_stock: Vec<&str> = actions
        .iter()
        .filter_map(|action| match action {
            LineAction::Change { stock_line_id, .. } => Some(stock_line_id.as_str()),
            LineAction::GoodsIn { .. } => None,
        })
        .collect();
    let stock: HashMap<String, stock_line::Model> = if wanted_stock.is_empty() {
        HashMap::new()
    } else {
        // By key only, the store checked here: with `store_id = ?` in the
        // statement SQLite's planner takes the (store_id, item_id) index and
        // reads every stock line of the store.
        stock_line::Entity::find()
            .filter(stock_line::Column::Id.is_in(wanted_stock.iter().copied()))
            .all(txn)
            .await?
            .into_iter()
            .filter(|line| line.store_id == store_id)
            .map(|line| (line.id.clone(), line))
            .collect()
    };

    // Items: those named by goods-in lines and those of the stock lines taken from.
    let mut wanted_items: Vec<&str> = Vec::new();
    for (index, action) in actions.iter().enumerate() {
        match action {
            LineAction::GoodsIn { item_id, .. } => wanted_items.push(item_id),
            LineAction::Change {
                stock_line_id,
                item_id,
                ..
            } => {
                let line = stock.get(stock_line_id).ok_or_else(|| {
                    Error::NotFound(format!(
                        "invoice.lines[{index}].stock_line_id: stock line {stock_line_id} does not exist in this store"
                    ))
                })?;
                if !item_id.is_empty() && *item_id != line.item_id {
                    return Err(Error::invalid(
                        &format!("invoice.lines[{index}].item_id"),
                        format!(
                            "{item_id} is not the item of stock line {stock_line_id} ({})",
                            line.item_id
                        ),
                    ));
                }
                wanted_items.push(&line.item_id);
            }
        }
    }
    let items: HashMap<String, item::Model> = item::Entity::find()
        .filter(item::Column::Id.is_in(wanted_items.iter().copied()))
        .all(txn)
        .await?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();

    // Check every line before writing anything; keep the running balance of
    // each stock line so that several lines on one stock line add up.
    let mut balance: HashMap<&str, f64> = HashMap::new();
    for (index, action) in actions.iter().enumerate() {
        match action {
            LineAction::GoodsIn { item_id, .. } => {
                let found = items.get(item_id).ok_or_else(|| {
                    Error::NotFound(format!(
                        "invoice.lines[{index}].item_id: item {item_id} does not exist"
                    ))
                })?;
                if !found.active {
                    return Err(Error::FailedPrecondition(format!(
                        "invoice.lines[{index}].item_id: item {} ({item_id}) is inactive",
                        found.code
                    )));
                }
            }
            LineAction::Change {
                stock_line_id,
                delta,
                ..
            } => {
                let line = &stock[stock_line_id];
                // Dispensing an inactive item is refused like receiving it;
                // a stocktake may still correct what is on the shelf.
                if kind == pb::InvoiceKind::CustomerInvoice {
                    match items.get(&line.item_id) {
                        Some(found) if !found.active => {
                            return Err(Error::FailedPrecondition(format!(
                                "invoice.lines[{index}]: item {} of stock line {stock_line_id} is inactive",
                                found.code
                            )))
                        }
                        _ => {}
                    }
                }
                let available = balance.entry(stock_line_id.as_str()).or_insert(
                    line.available_number_of_packs
                        .min(line.total_number_of_packs),
                );
                if *available + delta < -EPSILON {
                    let taken_before = line.available_number_of_packs - *available;
                    return Err(Error::FailedPrecondition(format!(
                        "invoice.lines[{index}]: stock line {stock_line_id} (batch {:?}) has {} packs available{}; \
                         this line takes {} and would leave it below zero",
                        line.batch,
                        line.available_number_of_packs,
                        if taken_before > EPSILON {
                            format!(", of which earlier lines of this invoice take {taken_before}")
                        } else {
                            String::new()
                        },
                        -delta
                    )));
                }
                *available += delta;
            }
        }
    }

    // Writes: the invoice, its lines, and the stock lines (new and changed).
    let now = creation_time(txn, store_id).await?;
    let kind_text = kind_to_str(kind);
    let invoice_number = next_invoice_number(txn, store_id, kind_text).await?;
    let invoice_row = invoice::Model {
        id: given.map_or_else(validate::new_id, |g| g.invoice_id.clone()),
        store_id: store_id.to_owned(),
        name_id: input.name_id.clone(),
        kind: kind_text.to_owned(),
        status: pb::InvoiceStatus::Finalised.as_str_name().to_owned(),
        invoice_number,
        reference: input.reference.clone(),
        created_at_ms: now,
        linked_invoice_id: String::new(),
        shipped_at_ms: 0,
        received_at_ms: 0,
        requisition_id: String::new(),
    };
    // Line ids sorted ascending in line order, so that reading the lines back
    // ordered by id gives them in the order they were sent.
    let line_ids: Vec<String> = match given {
        Some(given) => given.line_ids.clone(),
        None => {
            let mut ids: Vec<String> = (0..actions.len()).map(|_| validate::new_id()).collect();
            ids.sort_unstable();
            ids
        }
    };

    let mut changed_stock: BTreeMap<String, stock_line::Model> = BTreeMap::new();
    let mut new_stock: Vec<stock_line::Model> = Vec::new();
    let mut lines: Vec<invoice_line::Model> = Vec::with_capacity(actions.len());
    for (index, (action, line_id)) in actions.into_iter().zip(line_ids).enumerate() {
        match action {
            LineAction::GoodsIn {
                item_id,
                batch,
                expiry_date,
                pack_size,
                packs,
                cost,
                sell,
            } => {
                let created = stock_line::Model {
                    id: given.map_or_else(validate::new_id, |g| g.stock_line_ids[index].clone()),
                    store_id: store_id.to_owned(),
                    item_id: item_id.clone(),
                    batch: batch.clone(),
                    expiry_date: expiry_date.clone(),
                    pack_size,
                    available_number_of_packs: packs,
                    total_number_of_packs: packs,
                    cost_price_per_pack: cost,
                    sell_price_per_pack: sell,
                    updated_at_ms: now,
                };
                lines.push(invoice_line::Model {
                    id: line_id,
                    invoice_id: invoice_row.id.clone(),
                    store_id: store_id.to_owned(),
                    item_id,
                    stock_line_id: created.id.clone(),
                    batch,
                    expiry_date,
                    pack_size,
                    number_of_packs: packs,
                    cost_price_per_pack: cost,
                    sell_price_per_pack: sell,
                    received_number_of_packs: 0.0,
                });
                new_stock.push(created);
            }
            LineAction::Change {
                stock_line_id,
                delta,
                sell,
                ..
            } => {
                let current = changed_stock
                    .entry(stock_line_id.clone())
                    .or_insert_with(|| stock[&stock_line_id].clone());
                current.available_number_of_packs =
                    clamp_zero(current.available_number_of_packs + delta);
                current.total_number_of_packs = clamp_zero(current.total_number_of_packs + delta);
                current.updated_at_ms = now;
                lines.push(invoice_line::Model {
                    id: line_id,
                    invoice_id: invoice_row.id.clone(),
                    store_id: store_id.to_owned(),
                    item_id: current.item_id.clone(),
                    stock_line_id,
                    batch: current.batch.clone(),
                    expiry_date: current.expiry_date.clone(),
                    pack_size: current.pack_size,
                    number_of_packs: delta,
                    cost_price_per_pack: current.cost_price_per_pack,
                    sell_price_per_pack: sell,
                    received_number_of_packs: 0.0,
                });
            }
        }
    }
    invoice::Entity::insert(invoice::ActiveModel::from(invoice_row.clone()))
        .exec_without_returning(txn)
        .await?;
    for chunk in lines.chunks(200) {
        invoice_line::Entity::insert_many(
            chunk
                .iter()
                .cloned()
                .map(invoice_line::ActiveModel::from)
                .collect::<Vec<_>>(),
        )
        .exec_without_returning(txn)
        .await?;
    }
    for chunk in new_stock.chunks(200) {
        stock_line::Entity::insert_many(
            chunk
                .iter()
                .cloned()
                .map(stock_line::ActiveModel::from)
                .collect::<Vec<_>>(),
        )
        .exec_without_returning(txn)
        .await?;
    }
    // Changed stock lines: one UPDATE per stock line, setting the values
    // computed above (an invoice touches a handful; the rows are locked by the
    // store lock, so read-modify-write is safe).
    for line in changed_stock.values() {
        stock_line::Entity::update_many()
            .col_expr(
                stock_line::Column::AvailableNumberOfPacks,
                Expr::value(line.available_number_of_packs),
            )
            .col_expr(
                stock_line::Column::TotalNumberOfPacks,
                Expr::value(line.total_number_of_packs),
            )
            .col_expr(stock_line::Column::UpdatedAtMs, Expr::value(now))
            .filter(stock_line::Column::Id.eq(line.id.as_str()))
            .exec(txn)
            .await?;
    }

    let stock_lines: Vec<stock_line::Model> = new_stock
        .into_iter()
        .chain(changed_stock.into_values())
        .collect();
    let mut records = Vec::with_capacity(stock_lines.len() + lines.len() + 1);
    records.extend(stock_lines.iter().cloned().map(|line| SyncRecord {
        record: Some(sync_record::Record::StockLine(line.into())),
    }));
    records.push(SyncRecord {
        record: Some(sync_record::Record::Invoice(invoice_row.clone().into())),
    });
    records.extend(lines.iter().cloned().map(|line| SyncRecord {
        record: Some(sync_record::Record::InvoiceLine(line.into())),
    }));

    let mut answer: pb::Invoice = invoice_row.into();
    answer.lines = lines.into_iter().map(Into::into).collect();
    let response = pb::CreateInvoiceResponse {
        invoice: Some(answer),
        stock_lines: stock_lines.into_iter().map(Into::into).collect(),
    };
    Ok((response, records))
}

/// Rounding noise below zero becomes zero; real negatives were refused before.
fn clamp_zero(value: f64) -> f64 {
    if value < 0.0 {
        0.0
    } else {
        value
    }
}

/// Checks one request line and says what it will do.
fn validate_line(
    kind: pb::InvoiceKind,
    index: usize,
    line: &pb::InvoiceLine,
) -> Result<LineAction> {
    let field = |name: &str| format!("invoice.lines[{index}].{name}");
    let goods_in = match kind {
        pb::InvoiceKind::SupplierInvoice => true,
        pb::InvoiceKind::CustomerInvoice => false,
        _ => line.stock_line_id.is_empty(),
    };
    let packs = line.number_of_packs;
    if kind == pb::InvoiceKind::InventoryAdjustment && !goods_in {
        // Either sign; zero changes nothing and is a mistake.
        if !packs.is_finite() || packs == 0.0 || packs.abs() > validate::MAX_QUANTITY {
            return Err(Error::invalid(
                &field("number_of_packs"),
                format!(
                    "{packs} must be a non-zero number of packs between -{max} and {max}",
                    max = validate::MAX_QUANTITY
                ),
            ));
        }
    } else {
        validate::quantity(&field("number_of_packs"), packs, 0.0)?;
        if packs <= 0.0 {
            return Err(Error::invalid(
                &field("number_of_packs"),
                "must be more than 0",
            ));
        }
    }
    validate::quantity(&field("sell_price_per_pack"), line.sell_price_per_pack, 0.0)?;
    if goods_in {
        validate::uuid(&field("item_id"), &line.item_id)?;
        validate::optional_text(&field("batch"), &line.batch, MAX_BATCH_CHARS)?;
        validate::date(&field("expiry_date"), &line.expiry_date, true)?;
        validate::pack_size(&field("pack_size"), line.pack_size)?;
        validate::quantity(&field("cost_price_per_pack"), line.cost_price_per_pack, 0.0)?;
        if kind == pb::InvoiceKind::SupplierInvoice && !line.stock_line_id.is_empty() {
            return Err(Error::invalid(
                &field("stock_line_id"),
                "must be empty on a supplier invoice: each line creates its own stock line",
            ));
        }
        Ok(LineAction::GoodsIn {
            item_id: line.item_id.clone(),
            batch: line.batch.clone(),
            expiry_date: line.expiry_date.clone(),
            pack_size: line.pack_size,
            packs,
            cost: line.cost_price_per_pack,
            sell: line.sell_price_per_pack,
        })
    } else {
        if line.stock_line_id.is_empty() {
            return Err(Error::invalid(
                &field("stock_line_id"),
                "is required: the stock line the packs are taken from",
            ));
        }
        validate::uuid(&field("stock_line_id"), &line.stock_line_id)?;
        if !line.item_id.is_empty() {
            validate::uuid(&field("item_id"), &line.item_id)?;
        }
        let delta = if kind == pb::InvoiceKind::CustomerInvoice {
            -packs
        } else {
            packs
        };
        Ok(LineAction::Change {
            stock_line_id: line.stock_line_id.clone(),
            item_id: line.item_id.clone(),
            delta,
            sell: line.sell_price_per_pack,
        })
    }
}

/// The other party must exist, be active, and be a supplier (goods in) or a
/// customer (goods out). Store names qualify for both (transfers between stores).
async fn check_name<C: ConnectionTrait>(
    txn: &C,
    kind: pb::InvoiceKind,
    name_id: &str,
) -> Result<()> {
    let found = name::Entity::find_by_id(name_id.to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!("invoice.name_id: name {name_id} does not exist"))
        })?;
    if !found.active {
        return Err(Error::FailedPrecondition(format!(
            "invoice.name_id: name {} ({name_id}) is inactive",
            found.code
        )));
    }
    let fits = match kind {
        pb::InvoiceKind::SupplierInvoice => found.is_supplier || found.is_store,
        pb::InvoiceKind::CustomerInvoice => found.is_customer || found.is_store,
        _ => true,
    };
    if !fits {
        let role = if kind == pb::InvoiceKind::SupplierInvoice {
            "a supplier"
        } else {
            "a customer"
        };
        return Err(Error::FailedPrecondition(format!(
            "invoice.name_id: name {} ({name_id}) is not {role}",
            found.code
        )));
    }
    Ok(())
}

/// Serialises invoice writes of one store on PostgreSQL for the rest of the
/// transaction (see the module invariants). SQLite needs nothing: one writer.
pub async fn lock_store<C: ConnectionTrait>(txn: &C, store_id: &str) -> Result<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            [format!("storesync.store_ops:{store_id}").into()],
        ))
        .await?;
    }
    Ok(())
}

/// Highest invoice number of this store and kind, plus one.
pub async fn next_invoice_number<C: ConnectionTrait>(
    txn: &C,
    store_id: &str,
    kind: &str,
) -> Result<i64> {
    let highest: Option<Option<i64>> = invoice::Entity::find()
        .select_only()
        .column_as(invoice::Column::InvoiceNumber.max(), "highest")
        .filter(invoice::Column::StoreId.eq(store_id))
        .filter(invoice::Column::Kind.eq(kind))
        .into_tuple()
        .one(txn)
        .await?;
    Ok(highest.flatten().unwrap_or(0) + 1)
}

/// Now, but later than every invoice of the store so far: two invoices made in
/// one millisecond still list newest first, and a clock stepped back does not
/// reorder a store's history. Invoices of one store are written one at a time
/// (SQLite has one writer; PostgreSQL writers hold the store's lock).
pub async fn creation_time<C: ConnectionTrait>(txn: &C, store_id: &str) -> Result<i64> {
    let latest: Option<Option<i64>> = invoice::Entity::find()
        .select_only()
        .column_as(invoice::Column::CreatedAtMs.max(), "latest")
        .filter(invoice::Column::StoreId.eq(store_id))
        .into_tuple()
        .one(txn)
        .await?;
    Ok(validate::now_ms().max(latest.flatten().map_or(i64::MIN, |t| t + 1)))
}

/// One invoice of `store_id` with its lines (in the order they were sent).
pub async fn get_invoice<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    id: &str,
) -> Result<pb::Invoice> {
    validate::uuid("id", id)?;
    let found = invoice::Entity::find_by_id(id.to_owned())
        .filter(invoice::Column::StoreId.eq(store_id))
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("invoice {id} does not exist in this store")))?;
    let mut lines = invoice_line::Entity::find()
        .filter(invoice_line::Column::InvoiceId.eq(id))
        .all(db)
        .await?;
    // In Rust, not SQL: byte order, whatever the database collation.
    lines.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let mut answer: pb::Invoice = found.into();
    answer.lines = lines.into_iter().map(Into::into).collect();
    Ok(answer)
}

/// Default and largest page sizes of every list.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// See [`DEFAULT_PAGE_SIZE`].
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Invoices of `store_id`, newest first, without lines.
///
/// The page token is `<created_at_ms>.<id>` of the last invoice of the
/// previous page (keyset paging: stable while invoices are being added).
pub async fn list_invoices<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    request: &pb::ListInvoicesRequest,
) -> Result<pb::ListInvoicesResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let mut query = invoice::Entity::find().filter(invoice::Column::StoreId.eq(store_id));
    match pb::InvoiceKind::try_from(request.kind) {
        Ok(pb::InvoiceKind::Unspecified) => {}
        Ok(kind) => query = query.filter(invoice::Column::Kind.eq(kind_to_str(kind))),
        Err(_) => {
            return Err(Error::invalid(
                "kind",
                format!("{} is not an invoice kind", request.kind),
            ))
        }
    }
    let mut rows = newest_first(
        query,
        &request.page_token,
        invoice::Column::CreatedAtMs,
        invoice::Column::Id,
        page_size,
    )?
    .all(db)
    .await?;
    let next_page_token = next_token(&mut rows, page_size, |last| {
        format!("{}.{}", last.created_at_ms, last.id)
    });
    Ok(pb::ListInvoicesResponse {
        invoices: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

/// Drops the look-ahead row of a page fetched with `limit(page_size + 1)` and
/// returns the token of the next page (empty on the last page).
/// `query` from `page_token` on (a `"created_at_ms.id"` token of
/// [`next_token`], empty for the first page), newest first, with one row
/// more than `page_size` for [`next_token`] to see whether a page follows.
pub fn newest_first<E, C>(
    mut query: sea_orm::Select<E>,
    page_token: &str,
    created_at: C,
    id: C,
    page_size: u64,
) -> Result<sea_orm::Select<E>>
where
    E: EntityTrait,
    C: ColumnTrait + Copy,
{
    if !page_token.is_empty() {
        let (at, row_id) = page_token
            .split_once('.')
            .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
            .ok_or_else(|| Error::invalid("page_token", "is not a token this server issued"))?;
        validate::uuid("page_token", row_id)?;
        query = query.filter(
            sea_orm::Condition::any().add(created_at.lt(at)).add(
                sea_orm::Condition::all()
                    .add(created_at.eq(at))
                    .add(id.lt(row_id)),
            ),
        );
    }
    Ok(query
        .order_by_desc(created_at)
        .order_by_desc(id)
        .limit(page_size + 1))
}

pub fn next_token<T>(rows: &mut Vec<T>, page_size: u64, token: impl Fn(&T) -> String) -> String {
    let page_size = usize::try_from(page_size).unwrap_or(usize::MAX);
    if rows.len() > page_size {
        rows.truncate(page_size);
        rows.last().map(token).unwrap_or_default()
    } else {
        String::new()
    }
}

/// Stock lines of `store_id` ordered by id, optionally of one item and only
/// those with packs left. The page token is the last id of the previous page.
pub async fn list_stock<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    request: &pb::ListStockRequest,
) -> Result<pb::ListStockResponse> {
    let page_size = validate::page_size(
        "page_size",
        request.page_size,
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
    )?;
    let mut query = stock_line::Entity::find().filter(stock_line::Column::StoreId.eq(store_id));
    if !request.item_id.is_empty() {
        validate::uuid("item_id", &request.item_id)?;
        query = query.filter(stock_line::Column::ItemId.eq(request.item_id.as_str()));
    }
    if request.in_stock_only {
        query = query.filter(stock_line::Column::TotalNumberOfPacks.gt(0.0));
    }
    if !request.page_token.is_empty() {
        validate::uuid("page_token", &request.page_token)?;
        query = query.filter(stock_line::Column::Id.gt(request.page_token.as_str()));
    }
    let mut rows = query
        .order_by_asc(stock_line::Column::Id)
        .limit(page_size + 1)
        .all(db)
        .await?;
    let next_page_token = next_token(&mut rows, page_size, |last| last.id.clone());
    Ok(pb::ListStockResponse {
        stock_lines: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

/// Stock on hand per item of `store_id` (items whose code starts with
/// `item_code_prefix`, case-sensitive), ordered by item code: one aggregate query.
pub async fn stock_on_hand<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    item_code_prefix: &str,
) -> Result<pb::StoreStockOnHandResponse> {
    validate::optional_text("item_code_prefix", item_code_prefix, 64)?;
    let s = Alias::new("s");
    let i = Alias::new("i");
    let col = |table: &Alias, name: &str| Expr::col((table.clone(), Alias::new(name)));
    let mut select = Query::select();
    select
        .expr_as(col(&s, "item_id"), Alias::new("item_id"))
        .expr_as(col(&i, "code"), Alias::new("item_code"))
        .expr_as(col(&i, "name"), Alias::new("item_name"))
        .expr_as(
            Func::sum(col(&s, "total_number_of_packs")),
            Alias::new("packs"),
        )
        .expr_as(
            Func::sum(col(&s, "total_number_of_packs").mul(col(&s, "pack_size"))),
            Alias::new("units"),
        )
        .expr_as(Func::count(col(&s, "id")), Alias::new("batches"))
        .expr_as(
            Func::min(
                Func::cust(Alias::new("NULLIF"))
                    .args([col(&s, "expiry_date").into(), Expr::val("").into()]),
            ),
            Alias::new("earliest_expiry"),
        )
        .from_as(stock_line::Entity, s.clone())
        .join_as(
            JoinType::InnerJoin,
            item::Entity,
            i.clone(),
            col(&i, "id").equals((s.clone(), Alias::new("item_id"))),
        )
        .and_where(col(&s, "store_id").eq(store_id))
        .and_where(col(&s, "total_number_of_packs").gt(0.0))
        .group_by_col((s.clone(), Alias::new("item_id")))
        .group_by_col((i.clone(), Alias::new("code")))
        .group_by_col((i.clone(), Alias::new("name")))
        .order_by((i.clone(), Alias::new("code")), Order::Asc);
    if !item_code_prefix.is_empty() {
        select.and_where(crate::domain::master_data_read::starts_with(
            col(&i, "code").into(),
            item_code_prefix,
        ));
    }
    let backend = db.get_database_backend();
    let rows = db.query_all(backend.build(&select)).await?;
    let rows = rows
        .into_iter()
        .map(|row| {
            Ok(pb::StoreStockOnHandRow {
                item_id: row.try_get("", "item_id")?,
                item_code: row.try_get("", "item_code")?,
                item_name: row.try_get("", "item_name")?,
                packs_on_hand: row.try_get("", "packs")?,
                units_on_hand: row.try_get("", "units")?,
                batches: u32::try_from(row.try_get::<i64>("", "batches")?).unwrap_or(u32::MAX),
                earliest_expiry: row
                    .try_get::<Option<String>>("", "earliest_expiry")?
                    .unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(pb::StoreStockOnHandResponse { rows })
}

/// Batches of `store_id` with packs left that expire before `before`
/// (an ISO date), soonest first.
pub async fn expiring_stock<C: ConnectionTrait>(
    db: &C,
    store_id: &str,
    before: &str,
) -> Result<pb::StoreExpiringStockResponse> {
    validate::date("before", before, false)?;
    let rows = stock_line::Entity::find()
        .filter(stock_line::Column::StoreId.eq(store_id))
        .filter(stock_line::Column::ExpiryDate.ne(""))
        .filter(stock_line::Column::ExpiryDate.lt(before))
        .filter(stock_line::Column::TotalNumberOfPacks.gt(0.0))
        .order_by_asc(stock_line::Column::ExpiryDate)
        .order_by_asc(stock_line::Column::Id)
        .all(db)
        .await?;
    Ok(pb::StoreExpiringStockResponse {
        stock_lines: rows.into_iter().map(Into::into).collect(),
    })
}
