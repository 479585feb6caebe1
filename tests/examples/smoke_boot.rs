//! Boots an image's fresh VM N times through the real provisioning code (`vm::prepare`: overlay,
//! seed, domain XML) under the real libvirtd, with the real static agent on the seed, and speaks
//! the real guest protocol (`minion_channel::handshake`) up to the agent's Ready. Prints libvirt's
//! create time and domain start → Ready per run, and the median. Nothing is left afterwards.
//!
//!   cargo run --release -p minion-e2e --example smoke_boot -- VARIANT [RUNS=3] [AGENT]
//!
//! AGENT defaults to target/agent/minion-agent. Env: MEMORY_MIB (512), VCPUS (1),
//! MINION_IMAGES_DIR (/var/cache/minion/images). Needs root, libvirtd and `make image`.

use std::error::Error;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use minion_channel::{connect_unix, handshake, Limits};
use minion_provisioning::{accel, image, vm, Hypervisor};
use tokio_util::sync::CancellationToken;

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let variant = args.first().map_or("minimal", String::as_str).to_string();
    let runs: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let agent = args.get(2).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/agent/minion-agent")
    });
    if !agent.is_file() {
        return Err(format!("{} missing: scripts/build-agent.sh", agent.display()).into());
    }
    let images: PathBuf = env_or(
        "MINION_IMAGES_DIR",
        PathBuf::from("/var/cache/minion/images"),
    );
    let accel = accel::detect();
    let img = image::load(&images, &variant)?;
    std::fs::create_dir_all("/var/lib/minion")?;
    let state = tempfile::Builder::new()
        .prefix("smoke-")
        .tempdir_in("/var/lib/minion")?;
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755))?;
    let hv = Hypervisor::connect("qemu:///system")?;
    let limits = Limits::default();

    let mut ready = Vec::new();
    for run in 1..=runs {
        let req = vm::VmRequest {
            state_dir: state.path().to_path_buf(),
            job_id: format!("smoke-{}-{run}", std::process::id()),
            image: img.clone(),
            accel: accel.clone(),
            agent_binary: agent.clone(),
            vcpus: env_or("VCPUS", 1),
            memory_mib: env_or("MEMORY_MIB", 512),
            hostname: "minion-smoke".into(),
            network: None,
            disk_bytes: None,
            host_image: None,
            template_of: None,
        };
        let p = vm::prepare(&req)?;
        let t0 = Instant::now();
        let booted = async {
            let name = hv.create_transient(&p.xml)?;
            let created = t0.elapsed();
            let stream = connect_unix(&p.files.channel_socket, Duration::from_secs(30)).await?;
            let session = handshake(stream, &limits, CancellationToken::new()).await?;
            Ok::<_, Box<dyn Error>>((
                name,
                created,
                t0.elapsed(),
                session.agent_version().to_string(),
            ))
        }
        .await;
        let name = p.name.clone();
        let kept = state.path().join(format!("console-{run}.log"));
        vm::teardown(&hv, &name, &p.files, Some(&kept))?;
        match booted {
            Ok((_, created, at_ready, version)) => {
                println!(
                    "run {run}: create {:.2}s, start→Ready {:.2}s (agent {version})",
                    created.as_secs_f64(),
                    at_ready.as_secs_f64()
                );
                ready.push(at_ready);
            }
            Err(e) => {
                let console = std::fs::read_to_string(&kept).unwrap_or_default();
                return Err(format!("run {run}: no Ready: {e}\n--- console ---\n{console}").into());
            }
        }
    }
    ready.sort();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{variant} ({accel}, {} MiB, {} vCPU, load {}): start→Ready median {:.2}s of {runs}",
        env_or("MEMORY_MIB", 512),
        env_or("VCPUS", 1),
        load.split_whitespace().next().unwrap_or("?"),
        ready[ready.len() / 2].as_secs_f64()
    );
    Ok(())
}
