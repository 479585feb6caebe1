//! Bringing up the VM's one NIC when its pool opted into guest networking (`network = "user"`).
//! qemu's user network has fixed addresses (guest 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3),
//! so no DHCP client is needed and the agent configures it directly. An image whose init already
//! configured the NIC (a default route exists) is left alone.

use std::process::Command;

const ADDRESS: &str = "10.0.2.15/24";
const GATEWAY: &str = "10.0.2.2";
const NAMESERVER: &str = "10.0.2.3";

/// Brings up loopback and the first NIC with qemu's user-network addresses; returns the NIC's name.
pub fn bring_up() -> Result<String, String> {
    let nic = first_nic()?;
    if has_default_route()? {
        return Ok(nic);
    }
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "set", &nic, "up"])?;
    ip(&["addr", "add", ADDRESS, "dev", &nic])?;
    ip(&["route", "add", "default", "via", GATEWAY, "dev", &nic])?;
    std::fs::write("/etc/resolv.conf", format!("nameserver {NAMESERVER}\n"))
        .map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    Ok(nic)
}

/// The first network interface that is not loopback.
fn first_nic() -> Result<String, String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map_err(|e| format!("/sys/class/net: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| "the pool gives its VMs a network but this VM has no NIC (does the image's kernel have virtio-net?)".into())
}

fn has_default_route() -> Result<bool, String> {
    let routes =
        std::fs::read_to_string("/proc/net/route").map_err(|e| format!("/proc/net/route: {e}"))?;
    Ok(routes
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000")))
}

/// `ip`, from iproute2 where the image has it, else busybox's applet (the minimal image).
fn ip(args: &[&str]) -> Result<(), String> {
    let mut c = if minion_formula::on_path("ip") {
        Command::new("ip")
    } else {
        let mut c = Command::new("busybox");
        c.arg("ip");
        c
    };
    let out = c
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (neither iproute2 nor busybox?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
