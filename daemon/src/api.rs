//! The gRPC service (`minion.v1.controller.Controller`): a thin mapping from requests to the
//! [`Service`] facade and from its errors to gRPC statuses. Each call first checks the caller's
//! role (the access gate in front of the service found the caller).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use minion_proto::controller as pb;
use minion_proto::controller::controller_server::Controller;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::access::{refused, require, Role};
use crate::artifacts::{self, ArtifactError};
use crate::catalog::{self, CatalogError};
use crate::instance_api;
use crate::jobs::convert::{job_to_pb, state_from_pb};
use crate::jobs::{Created, JobsError, ListQuery, StoreError};
use crate::service::{CancelError, PoolAdminError, Service, SubmitError};
use crate::snapshots::SnapshotStatus;
use crate::taskrepo::RepoError;
use crate::validations::ValidationError;
use crate::watch;

const ARTIFACT_CHUNK: usize = 256 * 1024;

pub struct Api {
    pub svc: Arc<Service>,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn submit_status(e: SubmitError) -> Status {
    let msg = e.to_string();
    match e {
        SubmitError::Repo(RepoError::FormulaMissing { .. } | RepoError::NoSuchDir { .. }) => {
            Status::not_found(msg)
        }
        SubmitError::Repo(RepoError::Fetch { .. }) => Status::failed_precondition(msg),
        SubmitError::Repo(RepoError::NotUnderRoots { .. }) => Status::permission_denied(msg),
        SubmitError::Repo(RepoError::TooLarge { .. }) => Status::resource_exhausted(msg),
        SubmitError::Repo(RepoError::Io { .. }) | SubmitError::Jobs(_) => Status::internal(msg),
        _ => Status::invalid_argument(msg),
    }
}

fn jobs_status(e: JobsError) -> Status {
    match e {
        JobsError::Store(StoreError::NotFound(id)) => Status::not_found(format!("no job {id}")),
        JobsError::Store(e @ StoreError::Pruned(_)) => Status::not_found(e.to_string()),
        JobsError::Store(e @ StoreError::Corrupt { .. }) => Status::data_loss(e.to_string()),
        JobsError::Store(StoreError::Illegal(i)) => Status::failed_precondition(i.to_string()),
        JobsError::ShuttingDown { .. } => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

/// A job whose artifacts the retention policy removed says so instead of "no such file".
fn artifacts_kept(r: &crate::jobs::JobRecord) -> Result<(), Status> {
    match &r.artifacts_pruned {
        Some(p) => Err(Status::not_found(format!(
            "job {}: its artifacts and log were pruned {p}",
            r.id
        ))),
        None => Ok(()),
    }
}

fn artifact_status(e: ArtifactError) -> Status {
    match e {
        ArtifactError::BadPath(_) => Status::invalid_argument(e.to_string()),
        ArtifactError::NotFound(_) => Status::not_found(e.to_string()),
        ArtifactError::Io { .. } => Status::internal(e.to_string()),
    }
}

fn pool_to_pb(p: crate::service::PoolStatus) -> pb::Pool {
    pb::Pool {
        name: p.name,
        image: p.cfg.image.clone(),
        libvirt_uri: p.cfg.libvirt_uri.clone(),
        max_vms: p.cfg.max_vms,
        vcpus: p.cfg.vcpus,
        memory_mib: p.cfg.memory_mib,
        default_timeout_seconds: p.cfg.default_timeout_seconds,
        running: p.running,
        queued: p.queued,
        ready: p.ready,
        booting: p.booting,
        min_ready: p.cfg.min_ready,
        drained: p.cfg.drained,
        snapshot: p.snapshot.as_str().to_string(),
        snapshot_reason: match &p.snapshot {
            SnapshotStatus::Broken { reason } => reason.clone(),
            _ => String::new(),
        },
        snapshot_bytes: match p.snapshot {
            SnapshotStatus::Ready { disk_bytes } => disk_bytes,
            _ => 0,
        },
        hosts: p
            .hosts
            .into_iter()
            .map(|(name, r)| pb::PoolHost {
                name,
                usable: r.is_ok(),
                reason: r.err().map(|e| e.0).unwrap_or_default(),
            })
            .collect(),
    }
}

fn host_to_pb((h, pools): (crate::hosts::HostStatus, Vec<String>)) -> pb::Host {
    pb::Host {
        state: match (h.up, h.drained) {
            (false, _) => "down",
            (true, true) => "draining",
            (true, false) => "up",
        }
        .to_string(),
        name: h.name,
        uri: h.uri,
        vms: h.vms,
        max_vms: h.max_vms,
        last_error: h.last_error.unwrap_or_default(),
        since_unix_ms: h
            .since
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64),
        storage_pool: h.storage_pool,
        images: h
            .images
            .into_iter()
            .map(|(image, r)| pb::HostImage {
                image,
                verified: r.is_ok(),
                reason: r.err().map(|e| e.0).unwrap_or_default(),
            })
            .collect(),
        pools,
    }
}

fn host_admin_status(e: crate::service::HostAdminError) -> Status {
    match e {
        crate::service::HostAdminError::NoSuchHost(_) => Status::not_found(e.to_string()),
        crate::service::HostAdminError::Invalid(_) => Status::invalid_argument(e.to_string()),
    }
}

fn catalog_status(e: CatalogError) -> Status {
    let msg = e.to_string();
    match e {
        CatalogError::BadInput(_) | CatalogError::Upload(_) => Status::invalid_argument(msg),
        CatalogError::InUse { .. } => Status::failed_precondition(msg),
        CatalogError::NoSpace { .. } => Status::resource_exhausted(msg),
        CatalogError::Provision(minion_provisioning::ProvisionError::ImageNotFound { .. }) => {
            Status::not_found(msg)
        }
        CatalogError::Provision(minion_provisioning::ProvisionError::InvalidSpec { .. }) => {
            Status::invalid_argument(msg)
        }
        CatalogError::Validation(ValidationError::Stopped(_)) => Status::unavailable(msg),
        CatalogError::Validation(ValidationError::Failed { .. }) => {
            Status::failed_precondition(msg)
        }
        CatalogError::Provision(_)
        | CatalogError::Task(_)
        | CatalogError::Validation(ValidationError::Image { .. } | ValidationError::Task(_)) => {
            Status::internal(msg)
        }
    }
}

fn image_to_pb(
    i: &minion_provisioning::Image,
    v: Option<&minion_provisioning::import::Validation>,
) -> pb::Image {
    use minion_provisioning::import::ValidationState;
    pb::Image {
        name: i.manifest.name.clone(),
        arch: i.manifest.arch.clone(),
        format: i.manifest.format.as_str().to_string(),
        virtual_size: i.manifest.virtual_size.unwrap_or(0),
        file_size: i.manifest.file_size.unwrap_or(0),
        sha256: i.manifest.sha256.clone().unwrap_or_default(),
        recipe_hash: i.manifest.recipe_hash.clone().unwrap_or_default(),
        built_at: i.manifest.built_at.clone().unwrap_or_default(),
        dir: i.dir.display().to_string(),
        agent_start: i.manifest.agent_start.as_str().into(),
        source: if i.manifest.recipe_hash.is_some() {
            "recipe"
        } else {
            "import"
        }
        .into(),
        validation: match v.map(|v| v.state) {
            None => "",
            Some(ValidationState::Ok) => "ok",
            Some(ValidationState::Failed) => "failed",
            Some(ValidationState::Pending) => "pending",
        }
        .into(),
        validation_reason: v.map(|v| v.reason.clone()).unwrap_or_default(),
        validated_ready_ms: v.map(|v| v.ready_ms).unwrap_or(0),
    }
}

fn pool_admin_status(e: PoolAdminError) -> Status {
    match e {
        PoolAdminError::Unknown { .. } => Status::not_found(e.to_string()),
        PoolAdminError::Invalid { .. } => Status::invalid_argument(e.to_string()),
    }
}

fn check_id(id: &str) -> Result<(), Status> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(Status::invalid_argument(format!(
            "id: `{id}` is not a job UUID"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Controller for Api {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = require(&req, Role::Submit, "submit jobs")?;
        let (rec, existing) = match self
            .svc
            .submit(req.into_inner(), caller.id)
            .await
            .map_err(submit_status)?
        {
            Created::New(r) => (r, false),
            Created::Existing(r) => (r, true),
        };
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job_to_pb(&rec)),
            existing,
        }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        require(&req, Role::Read, "read jobs")?;
        let id = req.into_inner().id;
        check_id(&id)?;
        let rec = self.svc.get(&id).map_err(jobs_status)?;
        Ok(Response::new(job_to_pb(&rec)))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        require(&req, Role::Read, "list jobs")?;
        let r = req.into_inner();
        let after_seq = if r.page_token.is_empty() {
            None
        } else {
            Some(r.page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!("page_token: `{}` is not valid", r.page_token))
            })?)
        };
        let state = if r.state == 0 {
            None
        } else {
            Some(state_from_pb(r.state).ok_or_else(|| {
                Status::invalid_argument(format!("state: unknown value {}", r.state))
            })?)
        };
        let q = ListQuery {
            state,
            pool: (!r.pool.is_empty()).then_some(r.pool),
            item: (!r.item.is_empty()).then_some(r.item),
            after_seq,
            newest_first: r.newest_first,
            limit: match r.page_size {
                0 => 100,
                n => n.min(1000) as usize,
            },
        };
        let page = self.svc.list(&q).map_err(jobs_status)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.jobs.iter().map(job_to_pb).collect(),
            next_page_token: page.next.map(|s| s.to_string()).unwrap_or_default(),
            quarantined: self.svc.quarantined() as u32,
        }))
    }

    type WatchJobStream = Streamed<pb::WatchEvent>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        require(&req, Role::Read, "watch jobs")?;
        let r = req.into_inner();
        check_id(&r.id)?;
        let rec = self.svc.get(&r.id).map_err(jobs_status)?;
        let (tx, rx) = mpsc::channel(256);
        let jobs = self.svc.jobs().clone();
        tokio::spawn(async move { watch::watch(&jobs, rec, r.from_start, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = require(&req, Role::Submit, "cancel jobs")?;
        let id = req.into_inner().id;
        check_id(&id)?;
        // Own jobs with the submit role; anyone's with admin.
        let owner = self.svc.get(&id).map_err(jobs_status)?.request.submitter;
        if owner != caller.id && caller.role < Role::Admin {
            let whose = if owner.is_empty() {
                "an unknown submitter".to_string()
            } else {
                owner
            };
            return Err(refused(
                &caller,
                Role::Admin,
                &format!("cancel job {id}, submitted by {whose}"),
            ));
        }
        tracing::info!(job = %id, caller = %caller.id, "cancel asked");
        match self.svc.cancel(&id) {
            Ok(r) => Ok(Response::new(job_to_pb(&r))),
            Err(e @ CancelError::AlreadyFinal { .. }) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(CancelError::Jobs(e)) => Err(jobs_status(e)),
        }
    }

    async fn list_artifacts(
        &self,
        req: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        require(&req, Role::Read, "list artifacts")?;
        let id = req.into_inner().id;
        check_id(&id)?;
        artifacts_kept(&self.svc.get(&id).map_err(jobs_status)?)?;
        let root = self.svc.jobs().artifacts_dir(&id);
        let listed = tokio::task::spawn_blocking(move || artifacts::list(&root))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(artifact_status)?;
        let artifacts = listed
            .into_iter()
            .map(|a| pb::Artifact {
                path: a.path,
                size: a.size,
            })
            .collect();
        Ok(Response::new(pb::ListArtifactsResponse { artifacts }))
    }

    type GetArtifactStream = Streamed<pb::ArtifactChunk>;

    async fn get_artifact(
        &self,
        req: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        require(&req, Role::Read, "read artifacts")?;
        let r = req.into_inner();
        check_id(&r.id)?;
        artifacts_kept(&self.svc.get(&r.id).map_err(jobs_status)?)?;
        let path = artifacts::confined(&self.svc.jobs().artifacts_dir(&r.id), &r.path)
            .map_err(artifact_status)?;
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::not_found(format!("{}: {e}", r.path)))?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut buf = vec![0u8; ARTIFACT_CHUNK];
            loop {
                match f.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = pb::ArtifactChunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_pools(
        &self,
        req: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        require(&req, Role::Read, "list pools")?;
        let pools = self.svc.pools().into_iter().map(pool_to_pb).collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        require(&req, Role::Read, "list images")?;
        let dir = self.svc.images_dir().to_path_buf();
        let images = tokio::task::spawn_blocking(move || catalog::list(&dir))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(catalog_status)?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images
                .iter()
                .map(|(i, v)| image_to_pb(i, v.as_ref()))
                .collect(),
        }))
    }

    async fn import_image(
        &self,
        req: Request<tonic::Streaming<pb::ImportImageRequest>>,
    ) -> Result<Response<pb::Image>, Status> {
        use futures::StreamExt;
        use pb::import_image_request::Kind;
        let caller = require(&req, Role::Admin, "import an image")?;
        let mut inbound = req.into_inner();
        let Some(Kind::Header(h)) = inbound.message().await?.and_then(|m| m.kind) else {
            return Err(Status::invalid_argument(
                "import: the first request must be `header`",
            ));
        };
        tracing::info!(image = %h.name, by = %caller.id, bytes = h.size, "image import");
        let data = inbound.map(|m| match m {
            Ok(pb::ImportImageRequest {
                kind: Some(Kind::Data(d)),
            }) => Ok(d),
            Ok(_) => Err(std::io::Error::other(
                "a second header, or an empty request, among the data",
            )),
            Err(e) => Err(std::io::Error::other(e.message().to_string())),
        });
        let header = catalog::ImportHeader {
            name: h.name,
            arch: h.arch,
            agent_start: h.agent_start,
            size: h.size,
        };
        let (image, validation) = self
            .svc
            .import_image(header, Box::pin(data))
            .await
            .map_err(catalog_status)?;
        Ok(Response::new(image_to_pb(&image, Some(&validation))))
    }

    async fn validate_image(
        &self,
        req: Request<pb::ValidateImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let caller = require(&req, Role::Admin, "validate an image")?;
        let name = req.into_inner().name;
        tracing::info!(image = %name, by = %caller.id, "image validation");
        let (image, v) = self
            .svc
            .validate_image(&name)
            .await
            .map_err(catalog_status)?;
        Ok(Response::new(image_to_pb(&image, Some(&v))))
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let caller = require(&req, Role::Admin, "remove an image")?;
        let name = req.into_inner().name;
        let dir = self.svc.remove_image(&name).map_err(catalog_status)?;
        tracing::info!(image = %name, by = %caller.id, dir = %dir.display(), "image removed");
        Ok(Response::new(pb::RemoveImageResponse {
            removed_dir: dir.display().to_string(),
        }))
    }

    async fn drain_pool(
        &self,
        req: Request<pb::DrainPoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let caller = require(&req, Role::Admin, "drain pools")?;
        let r = req.into_inner();
        let p = self
            .svc
            .drain_pool(&r.name, r.drain, &caller.id)
            .map_err(pool_admin_status)?;
        Ok(Response::new(pool_to_pb(p)))
    }

    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        require(&req, Role::Read, "list hosts")?;
        let hosts = self.svc.hosts().into_iter().map(host_to_pb).collect();
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn drain_host(
        &self,
        req: Request<pb::DrainHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let caller = require(&req, Role::Admin, "drain hosts")?;
        let r = req.into_inner();
        let h = self
            .svc
            .drain_host(&r.name, r.drain, &caller.id)
            .map_err(host_admin_status)?;
        Ok(Response::new(host_to_pb(h)))
    }

    async fn push_image(
        &self,
        req: Request<pb::PushImageRequest>,
    ) -> Result<Response<pb::PushImageResponse>, Status> {
        let caller = require(&req, Role::Admin, "push images")?;
        let r = req.into_inner();
        let results = self
            .svc
            .push_image(&r.image, &r.hosts, r.all, &caller.id)
            .await
            .map_err(host_admin_status)?
            .into_iter()
            .map(|(host, r, took)| pb::PushResult {
                host,
                ok: r.is_ok(),
                error: r.err().map(|e| e.0).unwrap_or_default(),
                seconds: took.as_secs_f64(),
            })
            .collect();
        Ok(Response::new(pb::PushImageResponse { results }))
    }

    async fn set_pool(
        &self,
        req: Request<pb::SetPoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let caller = require(&req, Role::Admin, "change pools")?;
        let r = req.into_inner();
        let p = self
            .svc
            .set_pool(&r.name, r.max_vms, r.min_ready, &caller.id)
            .map_err(pool_admin_status)?;
        Ok(Response::new(pool_to_pb(p)))
    }

    async fn create_instance(
        &self,
        req: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let caller = require(&req, Role::Submit, "create an instance")?;
        let r = req.into_inner();
        instance_api::create(self.svc.instances(), &caller, r)
            .await
            .map(Response::new)
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        require(&req, Role::Read, "list instances")?;
        let instances = self
            .svc
            .instances()
            .list()
            .into_iter()
            .map(|(r, running)| instance_api::to_pb(r, running))
            .collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    async fn remove_instances(
        &self,
        req: Request<pb::RemoveInstancesRequest>,
    ) -> Result<Response<pb::RemoveInstancesResponse>, Status> {
        let caller = require(&req, Role::Submit, "remove instances")?;
        let r = req.into_inner();
        let removed = self
            .svc
            .instances()
            .remove(&caller, &r.names, r.all)
            .await
            .map_err(instance_api::status)?;
        let kept_consoles = removed
            .iter()
            .filter_map(|(n, kept)| Some((n.clone(), kept.as_ref()?.display().to_string())))
            .collect();
        Ok(Response::new(pb::RemoveInstancesResponse {
            removed: removed.into_iter().map(|(n, _)| n).collect(),
            kept_consoles,
        }))
    }

    async fn instance_action(
        &self,
        req: Request<pb::InstanceActionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let caller = require(&req, Role::Submit, "stop, start or reboot an instance")?;
        instance_api::action(self.svc.instances(), &caller, req.into_inner())
            .await
            .map(Response::new)
    }

    type ExecStream = Streamed<pb::ExecResponse>;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<pb::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let caller = require(&req, Role::Submit, "run a command in an instance")?;
        instance_api::exec(self.svc.instances(), &caller, req.into_inner())
            .await
            .map(Response::new)
    }

    type InstanceConsoleStream = Streamed<pb::ConsoleChunk>;

    async fn instance_console(
        &self,
        req: Request<pb::InstanceConsoleRequest>,
    ) -> Result<Response<Self::InstanceConsoleStream>, Status> {
        let caller = require(&req, Role::Read, "read an instance's console")?;
        instance_api::console(self.svc.instances(), &caller, req.into_inner())
            .await
            .map(Response::new)
    }
}
