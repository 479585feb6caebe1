//! Opens the agent's end of the channel: the virtio-serial port, or a unix socket outside a VM.

use std::{
    fs,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::args::Endpoint;

/// How long to wait for the port to show up (the virtio driver may still be probing at boot).
const PORT_WAIT: Duration = Duration::from_secs(60);

pub type ReadHalf = Box<dyn Read + Send>;
pub type WriteHalf = Box<dyn Write + Send>;

pub fn open(endpoint: &Endpoint) -> Result<(ReadHalf, WriteHalf)> {
    match endpoint {
        Endpoint::VirtioPort { name } => {
            let path = wait_for_port(
                name,
                Path::new("/dev"),
                Path::new("/sys/class/virtio-ports"),
            )?;
            open_device(&path)
        }
        Endpoint::Device(path) => open_device(path),
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path)
                .with_context(|| format!("connecting to {}", path.display()))?;
            let r = s.try_clone().context("cloning the socket")?;
            Ok((Box::new(r), Box::new(s)))
        }
    }
}

fn open_device(path: &Path) -> Result<(ReadHalf, WriteHalf)> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let r = f.try_clone().context("cloning the port handle")?;
    tracing::info!(port = %path.display(), "channel open");
    Ok((Box::new(r), Box::new(f)))
}

fn wait_for_port(name: &str, dev: &Path, sys: &Path) -> Result<PathBuf> {
    let started = Instant::now();
    loop {
        if let Some(p) = find_port(name, dev, sys) {
            return Ok(p);
        }
        if started.elapsed() > PORT_WAIT {
            bail!(
                "no virtio-serial port named {name} after {PORT_WAIT:?} (checked {}/virtio-ports and {})",
                dev.display(),
                sys.display()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `/dev/virtio-ports/NAME` where udev made it; else the `vportNpM` whose sysfs `name` matches.
pub fn find_port(name: &str, dev: &Path, sys: &Path) -> Option<PathBuf> {
    let link = dev.join("virtio-ports").join(name);
    if link.exists() {
        return Some(link);
    }
    for entry in fs::read_dir(sys).ok()?.flatten() {
        let Ok(found) = fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if found.trim_end() == name {
            let node = dev.join(entry.file_name());
            if node.exists() {
                return Some(node);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_sysfs_name_without_udev() {
        let root = tempfile::tempdir().expect("tempdir");
        let dev = root.path().join("dev");
        let sys = root.path().join("sys");
        for (port, pname) in [
            ("vport0p0", "org.qemu.guest_agent.0\n"),
            ("vport0p1", "org.minion.agent.0\n"),
        ] {
            fs::create_dir_all(sys.join(port)).expect("mkdir");
            fs::write(sys.join(port).join("name"), pname).expect("write");
        }
        fs::create_dir_all(&dev).expect("mkdir");
        assert_eq!(
            find_port("org.minion.agent.0", &dev, &sys),
            None,
            "node missing"
        );
        fs::write(dev.join("vport0p1"), "").expect("node");
        assert_eq!(
            find_port("org.minion.agent.0", &dev, &sys),
            Some(dev.join("vport0p1"))
        );
    }

    #[test]
    fn prefers_the_udev_link() {
        let root = tempfile::tempdir().expect("tempdir");
        let dev = root.path();
        fs::create_dir_all(dev.join("virtio-ports")).expect("mkdir");
        fs::write(dev.join("virtio-ports/org.minion.agent.0"), "").expect("link");
        assert_eq!(
            find_port("org.minion.agent.0", dev, &dev.join("nosys")),
            Some(dev.join("virtio-ports/org.minion.agent.0"))
        );
    }
}
