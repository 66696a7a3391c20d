//! One definition per synced table, and the registry sync iterates over.
//!
//! Each synced table is one file here implementing [`TableDef`]: its sea-orm
//! entity (which gives its columns and their types), who owns its rows
//! ([`Owner`]), its record in the contract (the `sync_record::Record` variant
//! and the `Table` value) and the checks of a record a site sent. Everything
//! else is written once over [`SyncTable`] and iterates over [`SYNCED`]: the
//! master's upstream apply with its ownership checks (on PostgreSQL and on
//! SQLite, see [`write`]), the initialisation snapshot, the satellite's apply
//! and its clear before a snapshot, and the count of a site's data.
//!
//! A new synced table touches its proto message (the contract), its entity
//! and migration, its file here, and one line in [`SYNCED`].
//!
//! # Ownership
//! [`Owner`] is the one statement of who writes a table's rows. The master
//! refuses a site's record of master data, a record whose owner column names
//! another store, and an id that already belongs to another store's row; both
//! backends take these rules from the owner column declared here.
//!
//! # Rows
//! Generic code moves rows as [`Row`]: the values of the entity's columns in
//! the entity's order, the primary key `id` first. The table's encode and
//! decode are the only place a table meets the wire.

// A record that is not of a table is handed back by value, to be tried on the
// next table: boxing it would allocate for every table tried.
#![allow(clippy::result_large_err)]

use sea_orm::sea_query::ArrayType;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ColumnType, DbErr, EntityTrait, FromQueryResult, IdenStatic,
    IntoActiveModel, Iterable, QueryResult, Value,
};

use crate::proto::v1::{sync_record::Record, Table};
use crate::Error;

pub mod apply;
mod invoice;
mod invoice_line;
mod item;
mod name;
mod requisition;
mod requisition_line;
mod stock_line;
mod store;
mod transfer;
pub mod write;

/// The synced tables, in dependency order: master data first, then the
/// store's data, each table after the ones its rows name. Snapshots send
/// them in this order and a satellite empties them in the reverse order.
pub static SYNCED: &[&dyn SyncTable] = &[
    &item::Item,
    &name::Name,
    &store::Store,
    &stock_line::StockLine,
    &invoice::Invoice,
    &invoice_line::InvoiceLine,
    &transfer::Transfer,
    &requisition::Requisition,
    &requisition_line::RequisitionLine,
];

/// Who writes a table's rows, and which sites receive them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Master data: written on the master only, sent to every site.
    Master,
    /// Written on the master only; a site receives the rows whose `column`
    /// is the id of the store it hosts (the `store` row itself).
    MasterForStore { column: &'static str },
    /// A store's data: written only by the site hosting the store that
    /// `column` names. The master keeps every store's copy and sends a site
    /// its own store's rows when it is initialised.
    Store { column: &'static str },
    /// Written on the master only; a site receives the rows of which one of
    /// `columns` is the id of the store it hosts (a transfer: the sending
    /// and the receiving store).
    MasterForStores { columns: &'static [&'static str] },
}

impl Owner {
    /// The column naming the store whose site receives a row, if not every site does.
    pub fn store_column(self) -> Option<&'static str> {
        match self {
            Self::Master | Self::MasterForStores { .. } => None,
            Self::MasterForStore { column } | Self::Store { column } => Some(column),
        }
    }

    /// Every column naming a store whose site receives a row (none: every site does).
    pub fn store_columns(self) -> Vec<&'static str> {
        match self {
            Self::MasterForStores { columns } => columns.to_vec(),
            other => other.store_column().into_iter().collect(),
        }
    }
}

/// A column of a store's table naming a row of another store's table (by
/// its `id`): such a row must be of the same store. References to master
/// data (items, names) are not listed: every store may name those.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The referencing column.
    pub column: &'static str,
    /// The table it names.
    pub table: &'static str,
}

/// A condition a stored row must meet for a site's upsert to change it,
/// beyond being of the site's store: what only the master may change in a
/// row a site otherwise writes (a line of an inbound shipment stays on it).
///
/// PostgreSQL checks it in the upsert itself (`ON CONFLICT … DO UPDATE …
/// WHERE`), so it costs a look-up only for a row that already exists and
/// none for a new one; a row that fails it is left unwritten and the batch
/// is refused with [`UpdateGuard::why`] (`write::WriteError::Guarded`).
/// SQLite does not run it: there the master's checks read the stored rows
/// before writing (`master-service`'s `transfers::check_site_rows`), and
/// must refuse at least what the guard does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateGuard {
    /// SQL over the stored row `t` and the sent row `excluded`; of the sent
    /// row it may name only `id` and the table's [`Reference`] columns.
    pub sql: &'static str,
    /// Why a row that fails it is refused.
    pub why: &'static str,
}

/// A column's type as sync carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    BigInt,
    Double,
    Bool,
}

impl Kind {
    fn of(table: &str, column: &str, column_type: &ColumnType) -> Self {
        match column_type {
            ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_) => Self::Text,
            ColumnType::Integer => Self::Int,
            ColumnType::BigInteger => Self::BigInt,
            ColumnType::Double => Self::Double,
            ColumnType::Boolean => Self::Bool,
            other => panic!("{table}.{column} is {other:?}, a type sync does not carry"),
        }
    }

    /// The PostgreSQL type of an array of this kind.
    pub fn postgres_array(self) -> &'static str {
        match self {
            Self::Text => "text[]",
            Self::Int => "int4[]",
            Self::BigInt => "int8[]",
            Self::Double => "float8[]",
            Self::Bool => "bool[]",
        }
    }

    /// sea-query's element type of an array of this kind.
    pub fn array_type(self) -> ArrayType {
        match self {
            Self::Text => ArrayType::String,
            Self::Int => ArrayType::Int,
            Self::BigInt => ArrayType::BigInt,
            Self::Double => ArrayType::Double,
            Self::Bool => ArrayType::Bool,
        }
    }

    /// Reads a value of this kind from column `index` of a query result.
    fn read(self, result: &QueryResult, index: usize) -> Result<Value, DbErr> {
        Ok(match self {
            Self::Text => result.try_get_by_index::<String>(index)?.into(),
            Self::Int => result.try_get_by_index::<i32>(index)?.into(),
            Self::BigInt => result.try_get_by_index::<i64>(index)?.into(),
            Self::Double => result.try_get_by_index::<f64>(index)?.into(),
            Self::Bool => result.try_get_by_index::<bool>(index)?.into(),
        })
    }
}

/// One column of a synced table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
}

/// One row: its values in the table's column order, `id` first.
#[derive(Clone, Debug, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// The row's primary key.
    pub fn id(&self) -> &str {
        self.text(0).unwrap_or_default()
    }

    /// The text in column `index`, if it is text.
    pub fn text(&self, index: usize) -> Option<&str> {
        match self.0.get(index) {
            Some(Value::String(Some(text))) => Some(text.as_str()),
            _ => None,
        }
    }

    /// Reads a row of `table` selected with its columns in order.
    pub fn read(table: &dyn SyncTable, result: &QueryResult) -> Result<Self, DbErr> {
        table
            .columns()
            .iter()
            .enumerate()
            .map(|(index, column)| column.kind.read(result, index))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// One record's effect on a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Upsert(Row),
    Delete(String),
}

/// A record a site sent, read by its table.
#[derive(Debug)]
pub struct Received {
    pub row: Row,
    /// The first of its fields (other than `id` and the owner) that fails
    /// the table's checks, as `INVALID_ARGUMENT` naming the field.
    pub problem: Option<Error>,
}

/// The model of a table definition's entity.
pub type Model<T> = <<T as TableDef>::Entity as EntityTrait>::Model;

/// What one synced table's file says about it; the rest is generic.
pub trait TableDef: Send + Sync + 'static {
    /// The sea-orm entity: table name, columns and their types.
    type Entity: EntityTrait;
    /// The entity's table name (sea-orm gives it only borrowed).
    const NAME: &'static str;
    /// The contract's name for the table (in deletes and error references).
    const TABLE: Table;
    /// Who writes its rows.
    const OWNER: Owner;
    /// Its columns naming rows of other store tables (see [`Reference`]).
    const REFERENCES: &'static [Reference] = &[];
    /// What a stored row must meet for a site to change it (see [`UpdateGuard`]).
    const UPDATE_GUARD: Option<UpdateGuard> = None;
    /// The model of a record of this table, or the record back.
    fn decode(record: Record) -> Result<Model<Self>, Record>;
    /// The record of a row.
    fn encode(model: Model<Self>) -> Record;
    /// Checks the fields of a row a site sent, other than `id` and the owner
    /// column; `field` makes the path of a field for the message.
    fn validate(_model: &Model<Self>, _field: &dyn Fn(&str) -> String) -> crate::Result<()> {
        Ok(())
    }
}

/// A synced table as generic code sees it (dyn-compatible; implemented for
/// every [`TableDef`]).
pub trait SyncTable: Send + Sync {
    /// The SQL table name, which is also its lower-case name in messages.
    fn name(&self) -> &'static str;
    /// The contract's `Table` value.
    fn table(&self) -> Table;
    /// Who writes its rows.
    fn owner(&self) -> Owner;
    /// Its columns, in order, `id` first.
    fn columns(&self) -> Vec<Column>;
    /// Its columns naming rows of other store tables.
    fn references(&self) -> &'static [Reference];
    /// What a stored row must meet for a site to change it.
    fn update_guard(&self) -> Option<UpdateGuard>;
    /// The position of column `name` in [`SyncTable::columns`].
    fn column_index(&self, name: &str) -> Option<usize>;
    /// The store a row belongs to (its owner column), if rows go to one store.
    fn store_of<'r>(&self, row: &'r Row) -> Option<&'r str>;
    /// The row of a record of this table, or the record back.
    fn decode(&self, record: Record) -> Result<Row, Record>;
    /// As [`SyncTable::decode`], with the table's checks of a record a site sent.
    fn receive(&self, record: Record, field: &dyn Fn(&str) -> String) -> Result<Received, Record>;
    /// The record of a row selected with its columns in order.
    fn record_of(&self, result: &QueryResult) -> Result<Record, DbErr>;
    /// The entity's table name, which [`SyncTable::name`] must be.
    fn entity_name(&self) -> String;
}

fn row_of<T: TableDef>(model: Model<T>) -> Row
where
    Model<T>: IntoActiveModel<<T::Entity as EntityTrait>::ActiveModel>,
{
    let mut active = model.into_active_model();
    Row(<T::Entity as EntityTrait>::Column::iter()
        .map(|column| active.take(column).into_value().unwrap_or(Value::Int(None)))
        .collect())
}

impl<T> SyncTable for T
where
    T: TableDef,
    Model<T>: IntoActiveModel<<T::Entity as EntityTrait>::ActiveModel> + FromQueryResult,
{
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn table(&self) -> Table {
        T::TABLE
    }

    fn owner(&self) -> Owner {
        T::OWNER
    }

    fn columns(&self) -> Vec<Column> {
        <T::Entity as EntityTrait>::Column::iter()
            .map(|column| Column {
                name: IdenStatic::as_str(&column).to_owned(),
                kind: Kind::of(
                    T::NAME,
                    IdenStatic::as_str(&column),
                    column.def().get_column_type(),
                ),
            })
            .collect()
    }

    fn references(&self) -> &'static [Reference] {
        T::REFERENCES
    }

    fn update_guard(&self) -> Option<UpdateGuard> {
        T::UPDATE_GUARD
    }

    fn column_index(&self, name: &str) -> Option<usize> {
        <T::Entity as EntityTrait>::Column::iter().position(|c| IdenStatic::as_str(&c) == name)
    }

    fn store_of<'r>(&self, row: &'r Row) -> Option<&'r str> {
        row.text(self.column_index(T::OWNER.store_column()?)?)
    }

    fn decode(&self, record: Record) -> Result<Row, Record> {
        T::decode(record).map(row_of::<T>)
    }

    fn receive(&self, record: Record, field: &dyn Fn(&str) -> String) -> Result<Received, Record> {
        let model = T::decode(record)?;
        // A field's path is made only for a record that fails: the checks
        // are pure, so they run again with paths to name the field, and a
        // valid record (nearly every one) costs no allocation per field.
        let problem = match T::validate(&model, &|_| String::new()) {
            Ok(()) => None,
            Err(_) => T::validate(&model, field).err(),
        };
        Ok(Received {
            row: row_of::<T>(model),
            problem,
        })
    }

    fn record_of(&self, result: &QueryResult) -> Result<Record, DbErr> {
        Model::<T>::from_query_result(result, "").map(T::encode)
    }

    fn entity_name(&self) -> String {
        sea_orm::EntityName::table_name(&<T::Entity as Default>::default()).to_owned()
    }
}

/// The table of `tables` that `table` names.
pub fn by_table<'t>(tables: &[&'t dyn SyncTable], table: Table) -> Option<&'t dyn SyncTable> {
    tables.iter().copied().find(|t| t.table() == table)
}

/// Decodes `record` with the table of `tables` it belongs to.
pub fn decode<'t>(
    tables: &[&'t dyn SyncTable],
    record: Record,
) -> Result<(&'t dyn SyncTable, Row), Record> {
    let mut record = record;
    for table in tables {
        match table.decode(record) {
            Ok(row) => return Ok((*table, row)),
            Err(back) => record = back,
        }
    }
    Err(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_synced_table_has_id_first_and_its_owner_column() {
        for table in SYNCED {
            let columns = table.columns();
            assert_eq!(
                columns[0],
                Column {
                    name: "id".into(),
                    kind: Kind::Text
                },
                "{}",
                table.name()
            );
            if let Some(store) = table.owner().store_column() {
                assert!(
                    columns
                        .iter()
                        .any(|c| c.name == store && c.kind == Kind::Text),
                    "{}.{store}",
                    table.name()
                );
            }
            for reference in table.references() {
                let target = SYNCED.iter().find(|t| t.name() == reference.table);
                assert!(
                    target.is_some_and(|t| matches!(t.owner(), Owner::Store { .. })),
                    "{}.{} names {}, which is not a store's synced table",
                    table.name(),
                    reference.column,
                    reference.table
                );
                assert!(
                    columns
                        .iter()
                        .any(|c| c.name == reference.column && c.kind == Kind::Text),
                    "{}.{}",
                    table.name(),
                    reference.column
                );
            }
            assert_eq!(table.entity_name(), table.name());
            assert_eq!(
                table.table().as_str_name().to_ascii_lowercase(),
                table.name(),
                "the contract's name is the table's"
            );
        }
    }
}
