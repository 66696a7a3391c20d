//! `StoreService` over gRPC, for whichever site hosts a store.
//!
//! A thin adapter: it checks nothing itself beyond what [`crate::domain::store_ops`]
//! checks, opens the write transaction, and lets the site add its own step
//! through [`StoreContext`] before commit. A satellite appends the changed
//! records to its outbox there; the master, serving its own store (Sync ID 1),
//! does nothing more. This module knows neither.

use sea_orm::{DatabaseConnection, DatabaseTransaction};
use tonic::{Request, Response, Status};

use crate::domain::error::Result;
use crate::kit::server::Operator;
use crate::proto::v1 as pb;
use crate::proto::v1::store_service_server::StoreService;
use crate::proto::v1::SyncRecord;
use crate::{domain::master_data_read, domain::requisitions, domain::store_ops, domain::transfers};

/// What a site adds to the store operations.
#[tonic::async_trait]
pub trait StoreContext: Send + Sync + 'static {
    /// The store this site hosts. A satellite answers FAILED_PRECONDITION
    /// until the sync stream has initialised it. Called before the write
    /// transaction opens (a SQLite pool has one connection).
    async fn store_id(&self) -> Result<String>;

    /// Runs inside the write transaction, after the change and before commit,
    /// with every record created or changed. An error rolls the whole write back.
    async fn after_write(&self, txn: &DatabaseTransaction, records: &[SyncRecord]) -> Result<()>;

    /// Runs after a write committed (the master wakes the sync streams for
    /// what its `after_write` put in the change log). Nothing by default.
    async fn after_commit(&self) {}
}

/// The `StoreService` of one site.
pub struct StoreServiceImpl<X> {
    /// The site's database (store data and its copy of master data).
    db: DatabaseConnection,
    /// The site's own part (which store; outbox or not).
    context: X,
}

impl<X: StoreContext> StoreServiceImpl<X> {
    /// Runs one transfer write in a transaction with the site's step, and
    /// logs it.
    async fn transfer_write<R, F>(&self, what: &str, request: R, write: F) -> Result<pb::Invoice>
    where
        F: for<'t> FnOnce(
            &'t DatabaseTransaction,
            &'t str,
            R,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<(pb::Invoice, Vec<SyncRecord>)>>
                    + Send
                    + 't,
            >,
        >,
    {
        let store_id = self.context.store_id().await?;
        let txn = crate::domain::db::begin(&self.db)
            .await
            .map_err(crate::Error::from)?;
        let (invoice, records) = write(&txn, &store_id, request).await?;
        self.context.after_write(&txn, &records).await?;
        txn.commit().await.map_err(crate::Error::from)?;
        self.context.after_commit().await;
        tracing::info!(
            store_id,
            invoice_id = %invoice.id,
            status = %invoice.status().as_str_name(),
            lines = invoice.lines.len(),
            "transfer: {what}"
        );
        Ok(invoice)
    }

    /// Runs one requisition write in a transaction with the site's step,
    /// and logs it.
    async fn requisition_write<R, F>(
        &self,
        what: &str,
        request: R,
        write: F,
    ) -> Result<pb::Requisition>
    where
        F: for<'t> FnOnce(
            &'t DatabaseTransaction,
            &'t str,
            R,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<(pb::Requisition, Vec<SyncRecord>)>>
                    + Send
                    + 't,
            >,
        >,
    {
        let store_id = self.context.store_id().await?;
        let txn = crate::domain::db::begin(&self.db)
            .await
            .map_err(crate::Error::from)?;
        let (requisition, records) = write(&txn, &store_id, request).await?;
        self.context.after_write(&txn, &records).await?;
        txn.commit().await.map_err(crate::Error::from)?;
        self.context.after_commit().await;
        tracing::info!(
            store_id,
            requisition_id = %requisition.id,
            status = %requisition.status().as_str_name(),
            lines = requisition.lines.len(),
            "requisition: {what}"
        );
        Ok(requisition)
    }

    pub fn new(db: DatabaseConnection, context: X) -> Self {
        Self { db, context }
    }

    /// The tonic server of this service, with the shared message size limits.
    pub fn into_server(self) -> pb::store_service_server::StoreServiceServer<Self> {
        pb::store_service_server::StoreServiceServer::new(self)
            .max_decoding_message_size(crate::kit::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::kit::server::MAX_MESSAGE_BYTES)
    }
}

/// Who made the request, for the log.
fn operator_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Operator>()
        .map(|operator| operator.0.clone())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl<X: StoreContext> StoreService for StoreServiceImpl<X> {
    async fn create_invoice(
        &self,
        request: Request<pb::CreateInvoiceRequest>,
    ) -> Result<Response<pb::CreateInvoiceResponse>, Status> {
        let operator = operator_of(&request);
        let store_id = self.context.store_id().await?;
        let txn = crate::domain::db::begin(&self.db)
            .await
            .map_err(crate::Error::from)?;
        let (response, records) =
            store_ops::create_invoice(&txn, &store_id, request.into_inner()).await?;
        self.context.after_write(&txn, &records).await?;
        txn.commit().await.map_err(crate::Error::from)?;
        self.context.after_commit().await;
        if let Some(invoice) = &response.invoice {
            tracing::info!(
                %operator,
                store_id,
                invoice_id = %invoice.id,
                kind = %crate::domain::convert::kind_to_str(invoice.kind()),
                number = invoice.invoice_number,
                lines = invoice.lines.len(),
                "invoice created"
            );
        }
        Ok(Response::new(response))
    }

    async fn get_invoice(
        &self,
        request: Request<pb::GetInvoiceRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let store_id = self.context.store_id().await?;
        let invoice = store_ops::get_invoice(&self.db, &store_id, &request.get_ref().id).await?;
        Ok(Response::new(invoice))
    }

    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let store_id = self.context.store_id().await?;
        let answer = store_ops::list_invoices(&self.db, &store_id, request.get_ref()).await?;
        Ok(Response::new(answer))
    }

    async fn list_stock(
        &self,
        request: Request<pb::ListStockRequest>,
    ) -> Result<Response<pb::ListStockResponse>, Status> {
        let store_id = self.context.store_id().await?;
        let answer = store_ops::list_stock(&self.db, &store_id, request.get_ref()).await?;
        Ok(Response::new(answer))
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        Ok(Response::new(
            master_data_read::list_items(&self.db, request.get_ref()).await?,
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

    async fn stock_on_hand(
        &self,
        request: Request<pb::StoreStockOnHandRequest>,
    ) -> Result<Response<pb::StoreStockOnHandResponse>, Status> {
        let store_id = self.context.store_id().await?;
        let answer =
            store_ops::stock_on_hand(&self.db, &store_id, &request.get_ref().item_code_prefix)
                .await?;
        Ok(Response::new(answer))
    }

    async fn expiring_stock(
        &self,
        request: Request<pb::StoreExpiringStockRequest>,
    ) -> Result<Response<pb::StoreExpiringStockResponse>, Status> {
        let store_id = self.context.store_id().await?;
        let answer =
            store_ops::expiring_stock(&self.db, &store_id, &request.get_ref().before).await?;
        Ok(Response::new(answer))
    }

    async fn create_transfer(
        &self,
        request: Request<pb::CreateTransferRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let invoice = self
            .transfer_write(
                "draft created",
                request.into_inner(),
                |txn, store, request| Box::pin(transfers::create_transfer(txn, store, request)),
            )
            .await?;
        Ok(Response::new(invoice))
    }

    async fn update_transfer(
        &self,
        request: Request<pb::UpdateTransferRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let invoice = self
            .transfer_write(
                "draft updated",
                request.into_inner(),
                |txn, store, request| Box::pin(transfers::update_transfer(txn, store, request)),
            )
            .await?;
        Ok(Response::new(invoice))
    }

    async fn ship_transfer(
        &self,
        request: Request<pb::ShipTransferRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let invoice = self
            .transfer_write("shipped", request.into_inner(), |txn, store, request| {
                Box::pin(transfers::ship_transfer(txn, store, request))
            })
            .await?;
        Ok(Response::new(invoice))
    }

    async fn receive_transfer(
        &self,
        request: Request<pb::ReceiveTransferRequest>,
    ) -> Result<Response<pb::Invoice>, Status> {
        let invoice = self
            .transfer_write("received", request.into_inner(), |txn, store, request| {
                Box::pin(transfers::receive_transfer(txn, store, request))
            })
            .await?;
        Ok(Response::new(invoice))
    }

    async fn list_transfers(
        &self,
        request: Request<pb::ListTransfersRequest>,
    ) -> Result<Response<pb::ListTransfersResponse>, Status> {
        let store_id = self.context.store_id().await?;
        let answer = transfers::list_transfers(&self.db, &store_id, request.get_ref()).await?;
        Ok(Response::new(answer))
    }

    async fn create_requisition(
        &self,
        request: Request<pb::CreateRequisitionRequest>,
    ) -> Result<Response<pb::Requisition>, Status> {
        let answer = self
            .requisition_write(
                "draft created",
                request.into_inner(),
                |txn, store, request| {
                    Box::pin(requisitions::create_requisition(txn, store, request))
                },
            )
            .await?;
        Ok(Response::new(answer))
    }

    async fn update_requisition(
        &self,
        request: Request<pb::UpdateRequisitionRequest>,
    ) -> Result<Response<pb::Requisition>, Status> {
        let answer = self
            .requisition_write(
                "draft updated",
                request.into_inner(),
                |txn, store, request| {
                    Box::pin(requisitions::update_requisition(txn, store, request))
                },
            )
            .await?;
        Ok(Response::new(answer))
    }

    async fn send_requisition(
        &self,
        request: Request<pb::SendRequisitionRequest>,
    ) -> Result<Response<pb::Requisition>, Status> {
        let answer = self
            .requisition_write("sent", request.into_inner(), |txn, store, request| {
                Box::pin(requisitions::send_requisition(txn, store, request))
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn finalise_requisition(
        &self,
        request: Request<pb::FinaliseRequisitionRequest>,
    ) -> Result<Response<pb::Requisition>, Status> {
        let answer = self
            .requisition_write("finalised", request.into_inner(), |txn, store, request| {
                Box::pin(requisitions::finalise_requisition(txn, store, request))
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn list_requisitions(
        &self,
        request: Request<pb::ListRequisitionsRequest>,
    ) -> Result<Response<pb::ListRequisitionsResponse>, Status> {
        let store_id = self.context.store_id().await?;
        let answer =
            requisitions::list_requisitions(&self.db, &store_id, request.get_ref()).await?;
        Ok(Response::new(answer))
    }
}
