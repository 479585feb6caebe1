//! `minion runtask --libvirt`: the formula in a fresh VM through miniond (the original runner's
//! `--libvirt` mode), with a local run's output, run directory and exit code. The task directory
//! travels with the submission as a tar; `--no-destroy` keeps the VM as an instance.

use std::io::Write;
use std::path::{Path, PathBuf};

use minion_proto::controller as pb;

use super::{client, fetch, follow_to, job_exit_code, ClientError, Connection};

/// What the submission may carry (the daemon's gRPC message limit is 4 MiB).
const MAX_UPLOAD: usize = 4 * 1024 * 1024 - 64 * 1024;

/// A local run's inputs, for a run in a VM.
pub struct LibvirtRun {
    pub socket: PathBuf,
    /// The formula file or its task directory.
    pub formula: PathBuf,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub args: Vec<(String, String)>,
    pub pool: Option<String>,
    pub image: Option<String>,
    pub no_destroy: bool,
    pub artifactsdir: Option<PathBuf>,
    /// The local run's default run directory root (`<state>/runs`).
    pub runs_dir: PathBuf,
}

/// Runs it; returns the exit code a local run would have.
pub fn run(r: LibvirtRun) -> i32 {
    super::block_on(run_async(r))
}

/// The task directory and the formula's path inside it.
fn task_of(formula: &Path) -> Result<(PathBuf, String), ClientError> {
    let bad = |m: String| ClientError::Status(tonic::Status::invalid_argument(m));
    if formula.is_dir() {
        return Ok((formula.to_path_buf(), String::new()));
    }
    if !formula.is_file() {
        return Err(bad(format!(
            "{}: no such formula or task directory",
            formula.display()
        )));
    }
    let dir = match formula.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = formula
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((dir, name))
}

/// The task directory as a tar: regular files and directories (symlinks and the rest are left
/// out, with a warning), bounded by what one submission may carry.
fn pack(dir: &Path) -> Result<Vec<u8>, ClientError> {
    let err = |m: String| ClientError::Other(format!("packing {}: {m}", dir.display()));
    let mut b = tar::Builder::new(Vec::new());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .map_err(|e| err(e.to_string()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e.file_type().map_err(|e| err(e.to_string()))?;
            let r = rel.join(e.file_name());
            if ft.is_dir() {
                b.append_dir(&r, e.path()).map_err(|e| err(e.to_string()))?;
                stack.push(r);
            } else if ft.is_file() {
                b.append_path_with_name(e.path(), &r)
                    .map_err(|e| err(e.to_string()))?;
            } else {
                eprintln!(
                    "minion: {} left out of the task: not a regular file or directory",
                    r.display()
                );
            }
            if b.get_ref().len() > MAX_UPLOAD {
                return Err(err(format!(
                    "the task directory is over {} MiB: submit it from a git URL instead (`minion submit`)",
                    MAX_UPLOAD / (1024 * 1024)
                )));
            }
        }
    }
    b.into_inner().map_err(|e| err(e.to_string()))
}

/// The pool for `--pool`, or the first pool of `--image`, or the daemon's default.
async fn pool_of(
    c: &mut minion_proto::client::Client,
    pool: Option<String>,
    image: Option<String>,
) -> Result<String, ClientError> {
    if let Some(p) = pool {
        return Ok(p);
    }
    let Some(image) = image else {
        return Ok(String::new());
    };
    let pools = c
        .list_pools(pb::ListPoolsRequest {})
        .await?
        .into_inner()
        .pools;
    pools
        .iter()
        .find(|p| p.image == image)
        .map(|p| p.name.clone())
        .ok_or_else(|| {
            ClientError::Status(tonic::Status::not_found(format!(
                "no pool of miniond runs image {image} (pools: {})",
                pools
                    .iter()
                    .map(|p| format!("{} ({})", p.name, p.image))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        })
}

async fn run_async(r: LibvirtRun) -> Result<i32, ClientError> {
    let conn = Connection {
        socket: r.socket.clone(),
        connect: None,
        ca: None,
        token_file: None,
        json: false,
    };
    let (dir, formula) = task_of(&r.formula)?;
    let task_tar = pack(&dir)?;
    let mut c = client::connect(&conn).await?;
    let pool = pool_of(&mut c, r.pool.clone(), r.image.clone()).await?;
    let keep = if r.no_destroy {
        format!("runtask-{}", &hex_id()[..6])
    } else {
        String::new()
    };
    let resp = c
        .submit_job(pb::SubmitJobRequest {
            repo: format!(
                "runtask:{}",
                dir.canonicalize().unwrap_or(dir.clone()).display()
            ),
            formula,
            item: r.item,
            item_type: r.item_type,
            arch: r.arch,
            pool,
            args: r.args.into_iter().collect(),
            task_tar,
            keep_vm_as: keep.clone(),
            ..pb::SubmitJobRequest::default()
        })
        .await?
        .into_inner();
    let job = resp
        .job
        .ok_or_else(|| ClientError::Other("miniond returned no job".into()))?;
    eprintln!("minion: job {} in pool {}: a fresh VM", job.id, job.pool);
    // Live output on stderr, as a local run's (stdout is for the TAP at the end).
    let fin = follow_to(&mut c, &job.id, true, true, &mut std::io::stderr()).await?;
    let run_dir = r
        .artifactsdir
        .clone()
        .unwrap_or_else(|| r.runs_dir.join(&job.id));
    let listed = c
        .list_artifacts(pb::ListArtifactsRequest { id: job.id.clone() })
        .await?
        .into_inner()
        .artifacts;
    for a in &listed {
        let rel = minion_safepath::relative(Path::new(&a.path))
            .map_err(|e| ClientError::Other(format!("artifact {:?}: {e}", a.path)))?;
        let dest = run_dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ClientError::Other(format!("{}: {e}", parent.display())))?;
        }
        let mut f = std::fs::File::create(&dest)
            .map_err(|e| ClientError::Other(format!("{}: {e}", dest.display())))?;
        fetch(&mut c, &job.id, &a.path, &mut f).await?;
    }
    print!("{}", fin.tap);
    let _ = std::io::stdout().flush();
    let code = job_exit_code(&fin);
    eprintln!(
        "minion: job {} ended {}{}: exit code {code}; artifacts in {}",
        fin.id,
        super::render::state_name(fin.state),
        if fin.failure_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", fin.failure_reason)
        },
        run_dir.display()
    );
    if !keep.is_empty() {
        let kept = c
            .list_instances(pb::ListInstancesRequest {})
            .await?
            .into_inner()
            .instances
            .into_iter()
            .any(|i| i.name == keep && i.state == pb::InstanceState::Ready as i32);
        if kept {
            eprintln!("minion: the VM is kept: minion instance shell {keep}");
            println!("{keep}");
        } else {
            eprintln!("minion: the VM was not kept (see the job's log)");
        }
    }
    Ok(code)
}

fn hex_id() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formula_file_names_its_directory_as_the_task() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("check.yml"), "x").expect("write");
        let (dir, f) = task_of(&d.path().join("check.yml")).expect("task");
        assert_eq!(dir, d.path());
        assert_eq!(f, "check.yml");
        let (dir, f) = task_of(d.path()).expect("task dir");
        assert_eq!((dir.as_path(), f.as_str()), (d.path(), ""));
        assert!(task_of(&d.path().join("nope.yml")).is_err());
    }

    #[test]
    fn the_task_is_packed_without_symlinks_and_within_the_limit() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        std::fs::write(d.path().join("runtask.yml"), "a").expect("write");
        std::fs::write(d.path().join("sub/x.py"), "b").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).expect("symlink");
        let tar_bytes = pack(d.path()).expect("packed");
        let mut names: Vec<String> = tar::Archive::new(tar_bytes.as_slice())
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["runtask.yml", "sub", "sub/x.py"]);
        std::fs::write(d.path().join("big"), vec![0u8; MAX_UPLOAD + 1]).expect("write");
        assert!(pack(d.path()).is_err());
    }
}
