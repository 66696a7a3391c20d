//! `MasterDataService` on a satellite: reads from the local copy the sync
//! stream keeps; every write is refused, because master data changes only on
//! the master and reaches satellites downstream.

use sea_orm::DatabaseConnection;
use storesync_shared::domain::master_data_read;
use storesync_shared::proto::v1 as pb;
use storesync_shared::proto::v1::master_data_service_server::MasterDataService;
use tonic::{Request, Response, Status};

/// The answer to every master-data write on a satellite.
pub const READ_ONLY: &str = "master data can only be changed on the master (Sync ID 1)";

/// Read-only `MasterDataService`.
pub struct ReadOnlyMasterData {
    db: DatabaseConnection,
}

impl ReadOnlyMasterData {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

fn refuse(what: &str) -> Status {
    Status::permission_denied(format!("{what}: {READ_ONLY}; this is a satellite"))
}

#[tonic::async_trait]
impl MasterDataService for ReadOnlyMasterData {
    async fn upsert_item(
        &self,
        _: Request<pb::UpsertItemRequest>,
    ) -> Result<Response<pb::UpsertItemResponse>, Status> {
        Err(refuse("UpsertItem"))
    }

    async fn delete_item(
        &self,
        _: Request<pb::DeleteItemRequest>,
    ) -> Result<Response<pb::DeleteItemResponse>, Status> {
        Err(refuse("DeleteItem"))
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        Ok(Response::new(
            master_data_read::get_item(&self.db, &request.get_ref().id).await?,
        ))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        Ok(Response::new(
            master_data_read::list_items(&self.db, request.get_ref()).await?,
        ))
    }

    async fn upsert_name(
        &self,
        _: Request<pb::UpsertNameRequest>,
    ) -> Result<Response<pb::UpsertNameResponse>, Status> {
        Err(refuse("UpsertName"))
    }

    async fn delete_name(
        &self,
        _: Request<pb::DeleteNameRequest>,
    ) -> Result<Response<pb::DeleteNameResponse>, Status> {
        Err(refuse("DeleteName"))
    }

    async fn get_name(
        &self,
        request: Request<pb::GetNameRequest>,
    ) -> Result<Response<pb::Name>, Status> {
        Ok(Response::new(
            master_data_read::get_name(&self.db, &request.get_ref().id).await?,
        ))
    }

    async fn list_names(
        &self,
        request: Request<pb::ListNamesRequest>,
    ) -> Result<Response<pb::ListNamesResponse>, Status> {
        Ok(Response::new(
            master_data_read::list_names(&self.db, request.get_ref()).await?,
        ))
    }
}
