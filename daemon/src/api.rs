//! The gRPC service (`minion.v1.controller.Controller`) over the daemon core.

use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use minion_proto::controller as pb;
use minion_proto::controller::controller_server::Controller;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::{event_to_pb, job_to_pb, state_from_pb};
use crate::daemon::{CancelError, Daemon, SubmitError};
use crate::store::{ListQuery, StoreError};
use crate::taskrepo::RepoError;

const ARTIFACT_CHUNK: usize = 256 * 1024;
/// How often a watcher re-checks the record, in case it missed the final event.
const WATCH_RECHECK: Duration = Duration::from_secs(2);

pub struct Api {
    pub d: Arc<Daemon>,
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn submit_status(e: SubmitError) -> Status {
    let msg = e.to_string();
    match e {
        SubmitError::Repo(RepoError::FormulaMissing { .. } | RepoError::NoSuchDir { .. }) => {
            Status::not_found(msg)
        }
        SubmitError::Repo(RepoError::Fetch { .. }) => Status::failed_precondition(msg),
        SubmitError::Repo(RepoError::Io { .. }) | SubmitError::Store(_) => Status::internal(msg),
        _ => Status::invalid_argument(msg),
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(id) => Status::not_found(format!("no job {id}")),
        StoreError::Illegal(i) => Status::failed_precondition(i.to_string()),
        e => Status::internal(e.to_string()),
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

/// `rel` under `root`, refusing anything that could leave it.
fn confined(root: &Path, rel: &str) -> Result<PathBuf, Status> {
    let p = Path::new(rel);
    if rel.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(Status::invalid_argument(format!(
            "path: `{rel}` must be a relative path inside the job's artifacts"
        )));
    }
    let full = root.join(p);
    let real = full
        .canonicalize()
        .map_err(|_| Status::not_found(format!("no artifact `{rel}`")))?;
    let real_root = root
        .canonicalize()
        .map_err(|_| Status::not_found("the job has no artifacts"))?;
    if !real.starts_with(&real_root) || !real.is_file() {
        return Err(Status::not_found(format!("no artifact `{rel}`")));
    }
    Ok(real)
}

/// Files under `root`, relative, sorted; symlinks are listed as they are, never followed.
fn walk(root: &Path) -> std::io::Result<Vec<pb::Artifact>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push(pb::Artifact {
                    path: rel,
                    size: e.metadata()?.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[tonic::async_trait]
impl Controller for Api {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let rec = self
            .d
            .submit(req.into_inner())
            .await
            .map_err(submit_status)?;
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job_to_pb(&rec)),
        }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().id;
        check_id(&id)?;
        let rec = self.d.store.get(&id).map_err(store_status)?;
        Ok(Response::new(job_to_pb(&rec)))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
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
            limit: match r.page_size {
                0 => 100,
                n => n.min(1000) as usize,
            },
        };
        let (jobs, next) = self.d.store.list(&q).map_err(store_status)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_to_pb).collect(),
            next_page_token: next.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    type WatchJobStream = Streamed<pb::WatchEvent>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let r = req.into_inner();
        check_id(&r.id)?;
        // The log's length is taken atomically with the subscription: every chunk is either in
        // the first `logged` bytes of minion.log or arrives live, never both, never neither.
        let log_path = self.d.artifacts_dir(&r.id).join("minion.log");
        let (mut live, logged) = self.d.hub.subscribe_with(&r.id, || {
            std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0)
        });
        let rec = self.d.store.get(&r.id).map_err(store_status)?;
        let (tx, rx) = mpsc::channel(256);
        let d = self.d.clone();
        tokio::spawn(async move {
            let send = |ev: pb::watch_event::Event| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(pb::WatchEvent { event: Some(ev) }))
                        .await
                        .is_ok()
                }
            };
            if r.from_start {
                for e in &rec.events {
                    if !send(pb::watch_event::Event::Lifecycle(event_to_pb(e))).await {
                        return;
                    }
                }
                if let Ok(f) = tokio::fs::File::open(&log_path).await {
                    let mut f = f.take(logged);
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = f.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let chunk = pb::LogChunk {
                            stream: pb::LogStream::Unspecified as i32,
                            data: buf[..n].to_vec(),
                        };
                        if !send(pb::watch_event::Event::Log(chunk)).await {
                            return;
                        }
                    }
                }
            }
            loop {
                if let Ok(now) = d.store.get(&r.id) {
                    if now.state.is_final() {
                        // Drain what is already buffered (the tail of the log), then finish.
                        while let Ok(ev) = live.try_recv() {
                            if let Some(pb::watch_event::Event::Finished(_)) = ev.event {
                                break;
                            }
                            if let Some(e) = ev.event {
                                if !send(e).await {
                                    return;
                                }
                            }
                        }
                        let _ = send(pb::watch_event::Event::Finished(job_to_pb(&now))).await;
                        return;
                    }
                }
                match tokio::time::timeout(WATCH_RECHECK, live.recv()).await {
                    Ok(Ok(pb::WatchEvent {
                        event: Some(pb::watch_event::Event::Finished(j)),
                    })) => {
                        let _ = send(pb::watch_event::Event::Finished(j)).await;
                        return;
                    }
                    Ok(Ok(pb::WatchEvent { event: Some(e) })) => {
                        if !send(e).await {
                            return;
                        }
                    }
                    Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {}
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        live = d.hub.subscribe(&r.id);
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().id;
        check_id(&id)?;
        match self.d.cancel(&id) {
            Ok(r) => Ok(Response::new(job_to_pb(&r))),
            Err(CancelError::AlreadyFinal { .. }) => {
                let rec = self.d.store.get(&id).map_err(store_status)?;
                Err(Status::failed_precondition(format!(
                    "job {id} is already {}",
                    rec.state
                )))
            }
            Err(CancelError::Store(e)) => Err(store_status(e)),
        }
    }

    async fn list_artifacts(
        &self,
        req: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let id = req.into_inner().id;
        check_id(&id)?;
        self.d.store.get(&id).map_err(store_status)?;
        let root = self.d.artifacts_dir(&id);
        let artifacts = match tokio::task::spawn_blocking(move || walk(&root)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Ok(Err(e)) => return Err(Status::internal(e.to_string())),
            Err(e) => return Err(Status::internal(e.to_string())),
        };
        Ok(Response::new(pb::ListArtifactsResponse { artifacts }))
    }

    type GetArtifactStream = Streamed<pb::ArtifactChunk>;

    async fn get_artifact(
        &self,
        req: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        let r = req.into_inner();
        check_id(&r.id)?;
        self.d.store.get(&r.id).map_err(store_status)?;
        let path = confined(&self.d.artifacts_dir(&r.id), &r.path)?;
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
        _req: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let pools = self
            .d
            .pools
            .values()
            .map(|p| pb::Pool {
                name: p.name.clone(),
                image: p.cfg.image.clone(),
                libvirt_uri: p.cfg.libvirt_uri.clone(),
                max_vms: p.cfg.max_vms,
                vcpus: p.cfg.vcpus,
                memory_mib: p.cfg.memory_mib,
                default_timeout_seconds: p.cfg.default_timeout_seconds,
                running: p.running.load(std::sync::atomic::Ordering::SeqCst),
                queued: self.d.queued_in(&p.name),
                ready: p.prebooted.ready(),
                booting: p.prebooted.booting(),
                min_ready: p.cfg.min_ready,
            })
            .collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    async fn list_images(
        &self,
        _req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let dir = self.d.images_dir().to_path_buf();
        let images = tokio::task::spawn_blocking(move || minion_provisioning::image::list(&dir))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images
                .into_iter()
                .map(|i| pb::Image {
                    name: i.manifest.name.clone(),
                    arch: i.manifest.arch.clone(),
                    format: i.manifest.format.as_str().to_string(),
                    virtual_size: i.manifest.virtual_size.unwrap_or(0),
                    file_size: i.manifest.file_size.unwrap_or(0),
                    sha256: i.manifest.sha256.clone().unwrap_or_default(),
                    recipe_hash: i.manifest.recipe_hash.clone().unwrap_or_default(),
                    built_at: i.manifest.built_at.clone().unwrap_or_default(),
                    dir: i.dir.display().to_string(),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_are_confined() {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("task_output")).expect("mkdir");
        std::fs::write(root.path().join("task_output/a.txt"), b"a").expect("w");
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("evil")).expect("ln");
        assert!(confined(root.path(), "task_output/a.txt").is_ok());
        for bad in ["../x", "/etc/passwd", "", "task_output/../../x", "./a"] {
            let e = confined(root.path(), bad).expect_err(bad);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        let e = confined(root.path(), "evil").expect_err("symlink out");
        assert_eq!(e.code(), tonic::Code::NotFound);
        let listed = walk(root.path()).expect("walk");
        assert_eq!(listed.len(), 1, "symlinks are not listed: {listed:?}");
        assert_eq!(listed[0].path, "task_output/a.txt");
    }
}
