//! Boots an image's fresh VM on any libvirt host through the storage-volume backend (image
//! pushed if the host lacks it, overlay and seed as volumes, console and channel as libvirt
//! streams) and speaks the guest protocol up to the agent's Ready; then tears it down and says
//! what is left in the host's storage pool.
//!
//!   cargo run -p minion-e2e --example remote_cycle -- URI [VARIANT=minimal] [RUNS=1] [POOL=minion]

use std::error::Error;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use minion_channel::{handshake, Limits};
use minion_provisioning::backend::{StorageVolumes, VmBackend};
use minion_provisioning::hostimage::{self, ImageFiles};
use minion_provisioning::{accel, image, vm, Hypervisor};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let uri = args
        .first()
        .ok_or("usage: remote_cycle URI [VARIANT] [RUNS] [POOL]")?;
    let variant = args.get(1).map_or("minimal", String::as_str);
    let runs: usize = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let pool = args.get(3).map_or("minion", String::as_str);
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/agent/minion-agent");
    let img = image::load(Path::new("/var/cache/minion/images"), variant)?;
    let hv = Hypervisor::connect(uri)?;
    let t = Instant::now();
    let files = ImageFiles::hash(&img)?;
    println!("hashed in {:?}", t.elapsed());
    let t = Instant::now();
    let on_host = match hostimage::verify(&hv, pool, &files) {
        Ok(h) => h,
        Err(e) => {
            println!("{e}; pushing");
            hostimage::push(&hv, pool, &files)?
        }
    };
    println!("image on host in {:?}: {on_host:?}", t.elapsed());
    std::fs::create_dir_all("/var/lib/minion")?;
    let state = tempfile::Builder::new()
        .prefix("remote-")
        .tempdir_in("/var/lib/minion")?;
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755))?;
    let backend = StorageVolumes::new(state.path(), pool);
    for run in 1..=runs {
        let req = vm::VmRequest {
            state_dir: state.path().to_path_buf(),
            job_id: format!("remote-{}-{run}", std::process::id()),
            image: img.clone(),
            accel: accel::detect(),
            agent_binary: agent.clone(),
            vcpus: 1,
            memory_mib: 512,
            hostname: "minion-remote".into(),
            network: None,
            disk_bytes: None,
            host_image: Some(on_host.clone()),
            template_of: None,
        };
        let t0 = Instant::now();
        let p = backend.prepare(&hv, &req)?;
        let prepared = t0.elapsed();
        backend.start(&hv, &p)?;
        let started = t0.elapsed();
        let sock = backend.open_channel(&hv, &p, Duration::from_secs(30))?;
        sock.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(sock)?;
        let ready = handshake(stream, &Limits::default(), CancellationToken::new()).await;
        let readied = t0.elapsed();
        if std::env::var("CUT").is_ok() {
            let k = std::env::var("CUT").unwrap_or_default();
            let fh = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fake-hosts.sh");
            std::process::Command::new(&fh).args(["cut", &k]).status()?;
            println!("cut; waiting 15 s");
            tokio::time::sleep(Duration::from_secs(15)).await;
            println!("ping: {:?}", hv.ping().is_ok());
            std::process::Command::new(&fh)
                .args(["mend", &k])
                .status()?;
            println!("mended; waiting 20 s");
            tokio::time::sleep(Duration::from_secs(20)).await;
            println!("ping: {:?}", hv.ping().is_ok());
            drop(ready);
            tokio::time::sleep(Duration::from_secs(5)).await;
            println!("survived");
            return Ok(());
        }
        backend.teardown(&hv, &p, Some(&PathBuf::from("/tmp/remote-console.log")))?;
        println!(
            "run {run}: prepared {prepared:?}, started {started:?}, ready {readied:?}: {}",
            match &ready {
                Ok(s) => format!("agent {}", s.agent_version()),
                Err(e) => format!("FAILED: {e}"),
            }
        );
    }
    println!("left in pool: {:?}", hv.list_volumes(pool, "minion-")?);
    Ok(())
}
