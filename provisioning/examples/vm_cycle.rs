//! Measures one disposable VM's provisioning steps against the real libvirtd, N times:
//! prepare (overlay, seed, XML), create (define+start of the transient domain), start → marker on
//! the console (a stub agent), and either the guest's own power-off → gone, or `destroy` of the
//! running domain; then teardown. Prints each run and the medians.
//!
//!   cargo run -p minion-provisioning --example vm_cycle -- [image=minimal] [runs=10] [poweroff|destroy]
//!
//! Needs root, libvirtd (scripts/libvirt-start.sh) and `make image`.

use std::error::Error;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use minion_provisioning::{accel, image, vm, Hypervisor};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let variant = args.first().map_or("minimal", String::as_str);
    let runs: usize = args.get(1).map_or(Ok(10), |s| s.parse())?;
    let destroy_running = args.get(2).is_some_and(|m| m == "destroy");

    let accel = accel::detect();
    let img = image::load(Path::new("/var/cache/minion/images"), variant)?;
    fs::create_dir_all("/var/lib/minion")?;
    let state = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir_in("/var/lib/minion")?;
    fs::set_permissions(state.path(), fs::Permissions::from_mode(0o755))?;
    let hv = Hypervisor::connect("qemu:///system")?;

    let (mut prep, mut create, mut marker, mut end, mut teardown) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        let job_id = format!("bench-{}-{run}", std::process::id());
        let mark = format!("MINION-BENCH-{job_id}");
        let agent = state.path().join("stub-agent");
        let tail = if destroy_running {
            "while :; do sleep 1; done"
        } else {
            "if [ $$ = 1 ]; then python3 -c 'import ctypes; ctypes.CDLL(None).reboot(0x4321FEDC)'; else systemctl poweroff --no-block; fi; sleep 60"
        };
        fs::write(
            &agent,
            format!("#!/bin/sh\necho {mark} > /dev/console\n{tail}\n"),
        )?;
        let req = vm::VmRequest {
            state_dir: state.path().to_path_buf(),
            job_id: job_id.clone(),
            image: img.clone(),
            accel: accel.clone(),
            agent_binary: agent,
            vcpus: 1,
            memory_mib: 512,
            hostname: "minion".into(),
            network: None,
            disk_bytes: None,
            host_image: None,
            template_of: None,
        };
        let t = Instant::now();
        let p = vm::prepare(&req)?;
        prep.push(t.elapsed());
        let t = Instant::now();
        let name = hv.create_transient(&p.xml)?;
        create.push(t.elapsed());
        let seen = loop {
            if fs::read(&p.files.console_log)
                .map(|b| String::from_utf8_lossy(&b).contains(&mark))
                .unwrap_or(false)
            {
                break Some(t.elapsed());
            }
            if t.elapsed() > Duration::from_secs(120) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let Some(seen) = seen else {
            vm::teardown(&hv, &name, &p.files, None)?;
            return Err(format!("run {run}: no marker within 120 s").into());
        };
        marker.push(seen);
        let t = Instant::now();
        if destroy_running {
            hv.destroy(&name)?;
        } else if !hv.wait_until_inactive(&name, Duration::from_secs(60))? {
            vm::teardown(&hv, &name, &p.files, None)?;
            return Err(format!("run {run}: guest did not power off").into());
        }
        end.push(t.elapsed());
        let t = Instant::now();
        vm::teardown(&hv, &name, &p.files, None)?;
        teardown.push(t.elapsed());
        println!(
            "run {run}: prepare {:?} create {:?} create→marker {:?} {} {:?} teardown {:?}",
            prep[run - 1],
            create[run - 1],
            marker[run - 1],
            if destroy_running {
                "destroy"
            } else {
                "poweroff→gone"
            },
            end[run - 1],
            teardown[run - 1]
        );
    }
    println!(
        "{variant} ({accel}), {runs} runs, medians: prepare {:?}, create (define+start) {:?}, create→marker {:?}, {} {:?}, teardown {:?}",
        median(prep),
        median(create),
        median(marker),
        if destroy_running { "destroy (running)" } else { "poweroff→gone" },
        median(end),
        median(teardown)
    );
    Ok(())
}
