//! Whole-row upserts of records received from another site, in arrival order.
//!
//! Records are written with multi-row `INSERT … ON CONFLICT (id) DO UPDATE`
//! statements (never one statement per record). A statement may not touch one
//! row twice, and unique columns (item and name codes) are checked row by row,
//! so a run of records is cut into statements wherever an id repeats: the rows
//! land in exactly the order they were sent, each state valid when it was made.

use std::collections::HashSet;

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel, Iterable,
    PrimaryKeyToColumn,
};

/// Bind parameters per statement: below SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_PARAMETERS: usize = 30_000;

/// Upserts `models` of entity `E` in order; `id_of` gives each row's primary key.
pub async fn all<E, C>(
    db: &C,
    models: Vec<E::Model>,
    id_of: impl Fn(&E::Model) -> &str,
) -> Result<(), DbErr>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    C: ConnectionTrait,
{
    if models.is_empty() {
        return Ok(());
    }
    let key: Vec<E::Column> = E::PrimaryKey::iter()
        .map(PrimaryKeyToColumn::into_column)
        .collect();
    let key_names: Vec<String> = key
        .iter()
        .map(|c| sea_orm::IdenStatic::as_str(c).to_owned())
        .collect();
    let update: Vec<E::Column> = E::Column::iter()
        .filter(|c| {
            !key_names
                .iter()
                .any(|k| k == sea_orm::IdenStatic::as_str(c))
        })
        .collect();
    let rows_per_statement = (MAX_PARAMETERS / E::Column::iter().count().max(1)).clamp(1, 1000);

    let mut run: Vec<E::Model> = Vec::new();
    let mut ids_in_run: HashSet<String> = HashSet::new();
    for model in models {
        let id = id_of(&model).to_owned();
        if run.len() == rows_per_statement || ids_in_run.contains(&id) {
            write::<E, C>(db, std::mem::take(&mut run), &key, &update).await?;
            ids_in_run.clear();
        }
        ids_in_run.insert(id);
        run.push(model);
    }
    write::<E, C>(db, run, &key, &update).await
}

async fn write<E, C>(
    db: &C,
    run: Vec<E::Model>,
    key: &[E::Column],
    update: &[E::Column],
) -> Result<(), DbErr>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    C: ConnectionTrait,
{
    if run.is_empty() {
        return Ok(());
    }
    let conflict = OnConflict::columns(key.iter().copied())
        .update_columns(update.iter().copied())
        .to_owned();
    E::insert_many(run.into_iter().map(IntoActiveModel::into_active_model))
        .on_conflict(conflict)
        .exec_without_returning(db)
        .await?;
    Ok(())
}
