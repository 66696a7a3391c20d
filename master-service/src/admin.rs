//! `AdminService`: the "sync with" list and the locked sync preferences.
//!
//! Reads need operator credentials (checked by the auth layer, which puts the
//! [`Operator`] in the request). Every change also needs an unlock token
//! ([`crate::unlock`]). The rules are in [`crate::sites`] and
//! [`crate::preferences`]; this module only adapts them, and after a change
//! that may end a live sync session (a site updated or removed, the shared
//! credentials changed) tells the sessions to re-check
//! ([`crate::sync::cluster::site_changed`]).

use std::sync::Arc;

use storesync_shared::kit::server::Operator;
use storesync_shared::proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::sync::refusals;
use crate::unlock::{self, Throttle};
use crate::{audit, preferences, sites, AppState};

/// Largest number of audit entries one call returns.
const MAX_AUDIT_ENTRIES: u32 = 1000;

/// `AdminService` over the master's state.
#[derive(Clone)]
pub struct AdminApi {
    state: AppState,
    /// Wrong authorisation codes per source, to slow down guessing.
    throttle: Arc<Throttle>,
}

impl AdminApi {
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            throttle: Arc::new(Throttle::default()),
        }
    }

    /// The authenticated operator (the auth layer guarantees one).
    fn operator<T>(request: &Request<T>) -> Result<String> {
        request
            .extensions()
            .get::<Operator>()
            .map(|operator| operator.0.clone())
            .ok_or_else(|| {
                Error::internal("AdminService reached without an authenticated operator")
            })
    }

    /// Site `sync_id` (`None`: the shared credentials) changed: live
    /// sessions re-check, here and on every replica.
    async fn site_changed(&self, sync_id: Option<u32>) {
        crate::sync::cluster::site_changed(&self.state.db, &self.state.site_changes, sync_id).await;
    }

    /// The operator, once their unlock token checks out.
    async fn unlocked<T>(&self, request: &Request<T>) -> Result<String> {
        let operator = Self::operator(request)?;
        unlock::require(&self.state.db, request.metadata(), &operator).await?;
        Ok(operator)
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let operator = Self::operator(&request)?;
        let source = request.remote_addr().map(|addr| addr.ip());
        let delay = self.throttle.delay(source);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let code = request.into_inner().authorisation_code;
        match unlock::unlock(&self.state.db, &operator, &code).await {
            Ok(issued) => {
                self.throttle.succeeded(source);
                audit::record(
                    &self.state.db,
                    &operator,
                    "unlock",
                    "sync preferences unlocked",
                )
                .await?;
                let expires_at = chrono::DateTime::from_timestamp_millis(issued.expires_at_ms)
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                Ok(Response::new(pb::UnlockResponse {
                    token: issued.token,
                    expires_at_ms: issued.expires_at_ms,
                    expires_at,
                }))
            }
            Err(error) => {
                if matches!(
                    &error,
                    Error::Domain(storesync_shared::Error::PermissionDenied(_))
                ) {
                    self.throttle.failed(source);
                    tracing::warn!(%operator, ?source, "wrong authorisation code");
                }
                Err(error.into())
            }
        }
    }

    async fn list_sites(
        &self,
        _request: Request<pb::ListSitesRequest>,
    ) -> Result<Response<pb::ListSitesResponse>, Status> {
        let sites = sites::list(&self.state.db).await?;
        Ok(Response::new(pb::ListSitesResponse { sites }))
    }

    async fn add_site(
        &self,
        request: Request<pb::AddSiteRequest>,
    ) -> Result<Response<pb::AddSiteResponse>, Status> {
        let operator = self.unlocked(&request).await?;
        let site = request
            .into_inner()
            .site
            .ok_or_else(|| Error::invalid("site", "is required"))?;
        let site = sites::add(&self.state.db, &self.state.notifier, &operator, site).await?;
        Ok(Response::new(pb::AddSiteResponse { site: Some(site) }))
    }

    async fn update_site(
        &self,
        request: Request<pb::UpdateSiteRequest>,
    ) -> Result<Response<pb::UpdateSiteResponse>, Status> {
        let operator = self.unlocked(&request).await?;
        let pb::UpdateSiteRequest {
            site,
            clear_own_credentials,
        } = request.into_inner();
        let site = site.ok_or_else(|| Error::invalid("site", "is required"))?;
        let sync_id = site.sync_id;
        let site = sites::update(
            &self.state.db,
            &self.state.notifier,
            &operator,
            site,
            clear_own_credentials,
        )
        .await?;
        self.site_changed(Some(sync_id)).await;
        Ok(Response::new(pb::UpdateSiteResponse { site: Some(site) }))
    }

    async fn remove_site(
        &self,
        request: Request<pb::RemoveSiteRequest>,
    ) -> Result<Response<pb::RemoveSiteResponse>, Status> {
        let operator = self.unlocked(&request).await?;
        let sync_id = request.into_inner().sync_id;
        sites::remove(&self.state.db, &self.state.notifier, &operator, sync_id).await?;
        self.site_changed(Some(sync_id)).await;
        Ok(Response::new(pb::RemoveSiteResponse {}))
    }

    async fn adopt_database(
        &self,
        request: Request<pb::AdoptDatabaseRequest>,
    ) -> Result<Response<pb::AdoptDatabaseResponse>, Status> {
        let operator = self.unlocked(&request).await?;
        let pb::AdoptDatabaseRequest {
            sync_id,
            database_id,
        } = request.into_inner();
        let previous = sites::adopt(&self.state.db, &operator, sync_id, &database_id).await?;
        Ok(Response::new(pb::AdoptDatabaseResponse {
            previous_database_id: previous,
        }))
    }

    async fn get_preferences(
        &self,
        _request: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        Ok(Response::new(preferences::get(&self.state.db).await?))
    }

    async fn update_preferences(
        &self,
        request: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let operator = self.unlocked(&request).await?;
        let input = request
            .into_inner()
            .preferences
            .ok_or_else(|| Error::invalid("preferences", "is required"))?;
        let credentials = !(input.sync_user_name.is_empty() && input.sync_password.is_empty());
        let preferences = preferences::update(&self.state.db, &operator, input).await?;
        if credentials {
            // Every site without its own credentials logged in with these.
            self.site_changed(None).await;
        }
        Ok(Response::new(preferences))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let limit = storesync_shared::domain::validate::page_size(
            "limit",
            request.into_inner().limit,
            100,
            MAX_AUDIT_ENTRIES,
        )
        .map_err(Error::from)?;
        let entries = audit::newest(&self.state.db, limit)
            .await?
            .into_iter()
            .map(|row| pb::AuditEntry {
                id: row.id,
                at_ms: row.at_ms,
                actor: row.actor,
                action: row.action,
                detail: row.detail,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn list_refusals(
        &self,
        request: Request<pb::ListRefusalsRequest>,
    ) -> Result<Response<pb::ListRefusalsResponse>, Status> {
        let request = request.into_inner();
        let limit = storesync_shared::domain::validate::page_size(
            "page_size",
            request.page_size,
            100,
            1000,
        )
        .map_err(Error::from)?;
        let offset = refusal_offset(&request.page_token)?;
        let filter = refusals::Filter {
            sync_id: (request.sync_id != 0).then_some(request.sync_id),
            since_ms: request.since_ms,
        };
        // One more than asked: whether another page follows.
        let mut page = refusals::list(&self.state.db, filter, offset, limit + 1)
            .await
            .map_err(Error::from)?;
        let next_page_token = if page.len() as u64 > limit {
            page.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            format!("{:x}", offset + limit)
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListRefusalsResponse {
            refusals: page,
            next_page_token,
        }))
    }

    async fn verify_sites(
        &self,
        request: Request<pb::VerifySitesRequest>,
    ) -> Result<Response<pb::VerifySitesResponse>, Status> {
        let operator = Self::operator(&request)?;
        let request = request.into_inner();
        let sites = crate::integrity::verify_sites(
            &self.state,
            &request.sync_ids,
            request.report_only,
            &operator,
            request.wait_seconds,
        )
        .await?;
        Ok(Response::new(pb::VerifySitesResponse { sites }))
    }
}

/// The offset a `ListRefusals` page token stands for (empty: the start).
fn refusal_offset(token: &str) -> Result<u64> {
    if token.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(token, 16).map_err(|_| {
        Error::from(storesync_shared::Error::InvalidArgument(format!(
            "page_token: {token:?} is not a token this master gave out"
        )))
    })
}
