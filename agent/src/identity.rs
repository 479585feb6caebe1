//! The VM's identity from the Job frame, applied before anything of the job runs. A VM restored
//! from a snapshot wakes with its template's memory: the same RNG state, clock, host name and
//! machine id as every other VM restored from it, until this runs.

use std::{fs, io, path::Path};

use anyhow::{bail, Context, Result};
use minion_proto::guest::Identity;

/// Most entropy bytes taken from the host (the kernel credits at most its pool's size anyway).
const MAX_ENTROPY: usize = 256;
/// Fewest entropy bytes that make a reseed worth the name.
const MIN_ENTROPY: usize = 16;
/// `_IOW('R', 0x03, int[2])`: add entropy to the input pool and credit it.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Where the identity's files go; a test points it elsewhere.
pub struct Root<'a>(pub &'a Path);

/// Applies `id`: RNG reseeded with the host's entropy, wall clock set, host name, machine id and
/// (on a cloud-init image) instance id written. Any failure is an error: a VM that cannot be made
/// unique must not run a job.
pub fn apply(id: &Identity, root: &Root) -> Result<()> {
    check(id)?;
    reseed(&id.entropy[..id.entropy.len().min(MAX_ENTROPY)]).context("reseeding the RNG")?;
    if id.clock_unix_ns > 0 {
        set_clock(id.clock_unix_ns).context("setting the clock")?;
    }
    if !id.hostname.is_empty() {
        set_hostname(&id.hostname).context("setting the host name")?;
    }
    write_files(id, root)
}

/// Every field's shape, before anything is changed.
fn check(id: &Identity) -> Result<()> {
    if id.entropy.len() < MIN_ENTROPY {
        bail!(
            "the identity carries {} bytes of entropy; at least {MIN_ENTROPY} are needed",
            id.entropy.len()
        );
    }
    if !id.hostname.is_empty() && !is_hostname(&id.hostname) {
        bail!("host name {:?} is not a valid host name", id.hostname);
    }
    if !id.machine_id.is_empty()
        && (id.machine_id.len() != 32
            || !id
                .machine_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        bail!(
            "machine id {:?} is not 32 lowercase hex digits",
            id.machine_id
        );
    }
    if id.instance_id.len() > 128 || id.instance_id.contains(['/', '\n', '\0']) {
        bail!("instance id {:?} is not a plain name", id.instance_id);
    }
    Ok(())
}

/// `/etc/hostname`, `/etc/machine-id`, and cloud-init's instance id where the image has cloud-init.
fn write_files(id: &Identity, root: &Root) -> Result<()> {
    if !id.hostname.is_empty() {
        write_if_dir(&root.0.join("etc/hostname"), &format!("{}\n", id.hostname))?;
    }
    if !id.machine_id.is_empty() {
        write_if_dir(
            &root.0.join("etc/machine-id"),
            &format!("{}\n", id.machine_id),
        )?;
    }
    if !id.instance_id.is_empty() {
        // cloud-init keeps the id it booted with here; a restored VM must not report its template's.
        write_if_dir(
            &root.0.join("var/lib/cloud/data/instance-id"),
            &format!("{}\n", id.instance_id),
        )?;
    }
    Ok(())
}

fn is_hostname(s: &str) -> bool {
    s.len() <= 63
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Writes `path` when its directory exists (an image without cloud-init has no
/// `/var/lib/cloud/data`).
fn write_if_dir(path: &Path, contents: &str) -> Result<()> {
    match path.parent() {
        Some(dir) if dir.is_dir() => {
            fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Credits `bytes` to the kernel's input pool and reseeds the CRNG from it, so two VMs restored
/// from one memory image draw different numbers from here on.
fn reseed(bytes: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let urandom = fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    let bits = i32::try_from(bytes.len() * 8).unwrap_or(i32::MAX);
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(bytes);
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a valid rand_pool_info of `len` bytes of buffer; the fd is open.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an argument-less ioctl on an open fd.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_clock(unix_ns: i64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: unix_ns.div_euclid(1_000_000_000),
        tv_nsec: unix_ns.rem_euclid(1_000_000_000),
    };
    // SAFETY: a valid timespec for the duration of the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: a valid buffer of `len` bytes for the duration of the call.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded() -> Identity {
        Identity {
            entropy: vec![7; 32],
            ..Identity::default()
        }
    }

    #[test]
    fn bad_values_are_refused_before_anything_is_changed() {
        for (id, what) in [
            (Identity::default(), "entropy"),
            (
                Identity {
                    machine_id: "ABC".into(),
                    ..seeded()
                },
                "machine id",
            ),
            (
                Identity {
                    instance_id: "../x/y".into(),
                    ..seeded()
                },
                "instance id",
            ),
            (
                Identity {
                    hostname: "a b".into(),
                    ..seeded()
                },
                "host name",
            ),
        ] {
            let err = check(&id).expect_err("refused");
            assert!(format!("{err:#}").contains(what), "{err:#}");
        }
        check(&seeded()).expect("fine");
    }

    #[test]
    fn files_are_written_only_where_their_directory_exists() {
        let root = tempfile::tempdir().expect("tempdir");
        let none = seeded();
        write_files(&none, &Root(root.path())).expect("nothing to write");
        assert_eq!(fs::read_dir(root.path()).expect("ls").count(), 0);
        fs::create_dir_all(root.path().join("etc")).expect("etc");
        let id = Identity {
            hostname: "minion-0b9c0c3e".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            instance_id: "job-1".into(),
            ..seeded()
        };
        write_files(&id, &Root(root.path())).expect("written");
        assert_eq!(
            fs::read_to_string(root.path().join("etc/machine-id")).expect("read"),
            "0123456789abcdef0123456789abcdef\n"
        );
        assert_eq!(
            fs::read_to_string(root.path().join("etc/hostname")).expect("read"),
            "minion-0b9c0c3e\n"
        );
        assert!(!root.path().join("var/lib/cloud/data/instance-id").exists());
        fs::create_dir_all(root.path().join("var/lib/cloud/data")).expect("cloud");
        write_files(&id, &Root(root.path())).expect("written");
        assert_eq!(
            fs::read_to_string(root.path().join("var/lib/cloud/data/instance-id")).expect("read"),
            "job-1\n"
        );
    }

    #[test]
    fn host_names_are_checked() {
        assert!(is_hostname("minion-0b9c0c3e"));
        assert!(!is_hostname("-x"));
        assert!(!is_hostname("a.b/c"));
        assert!(!is_hostname(&"a".repeat(64)));
    }
}
