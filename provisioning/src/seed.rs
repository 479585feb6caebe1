//! The per-job NoCloud seed: an ISO9660 volume labelled `cidata` holding `meta-data`, `user-data`
//! (rendered from `templates/`) and the static agent binary as `minion-agent` (mode 0755, kept by
//! Rock Ridge). Guests mount it read-only; our images exec the agent from it, generic cloud images
//! start it from the user-data.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use minijinja::context;

use crate::error::ProvisionError;
use crate::iso9660::{self, IsoFile, IsoSource};
use crate::templates;

/// The volume label NoCloud looks for.
pub const VOLUME_LABEL: &str = "cidata";
/// The agent's file name on the seed volume.
pub const AGENT_FILE: &str = "minion-agent";
/// Where guests mount the seed (the images' init and unit use the same path).
pub const SEED_MOUNT: &str = "/run/minion/seed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSpec {
    /// NoCloud `instance-id`: the job id.
    pub instance_id: String,
    /// NoCloud `local-hostname`.
    pub hostname: String,
    /// The static agent binary to put on the volume.
    pub agent_binary: PathBuf,
}

/// The two NoCloud documents of a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedDocuments {
    pub meta_data: String,
    pub user_data: String,
}

/// Renders `meta-data` and `user-data` for `spec` (validating its fields).
pub fn render(spec: &SeedSpec) -> Result<SeedDocuments, ProvisionError> {
    // The instance-id lands in YAML and in shell comments unquoted.
    crate::domain::check_token("instance_id", &spec.instance_id, 128)?;
    check_hostname(&spec.hostname)?;
    let ctx = context! {
        instance_id => &spec.instance_id,
        hostname => &spec.hostname,
        seed_mount => SEED_MOUNT,
        agent_name => AGENT_FILE,
    };
    Ok(SeedDocuments {
        meta_data: templates::render(templates::META_DATA, ctx.clone())?,
        user_data: templates::render(templates::USER_DATA, ctx)?,
    })
}

/// Writes the seed ISO to `out_iso` (atomically: a partial ISO is never left under that name).
/// The volume is written in-process ([`iso9660`]); the agent is streamed from `agent_binary`.
pub fn write(spec: &SeedSpec, out_iso: &Path) -> Result<(), ProvisionError> {
    let docs = render(spec)?;
    let agent_meta = fs::metadata(&spec.agent_binary)
        .map_err(ProvisionError::io("read agent binary", &spec.agent_binary))?;
    if !agent_meta.is_file() {
        return Err(ProvisionError::invalid(
            "agent binary",
            format!("{} is not a regular file", spec.agent_binary.display()),
        ));
    }
    let parent = match out_iso.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = out_iso.file_name().ok_or_else(|| {
        ProvisionError::invalid(
            "seed path",
            format!("{} has no file name", out_iso.display()),
        )
    })?;

    // Staged next to the output so the final rename is atomic; dropped (deleted) on any error.
    let mut staged = tempfile::Builder::new()
        .prefix(".seed-")
        .suffix(".iso")
        .tempfile_in(parent)
        .map_err(ProvisionError::io("create a temporary seed in", parent))?;
    let files = [
        IsoFile {
            name: "meta-data",
            mode: 0o644,
            source: IsoSource::Bytes(docs.meta_data.as_bytes()),
        },
        IsoFile {
            name: "user-data",
            mode: 0o644,
            source: IsoSource::Bytes(docs.user_data.as_bytes()),
        },
        IsoFile {
            name: AGENT_FILE,
            mode: 0o755,
            source: IsoSource::Path(&spec.agent_binary),
        },
    ];
    let staged_path = staged.path().to_path_buf();
    iso9660::write(VOLUME_LABEL, &files, staged.as_file_mut(), &staged_path)?;
    // qemu runs as libvirt-qemu and opens the seed read-only; tempfile creates 0600.
    fs::set_permissions(&staged_path, fs::Permissions::from_mode(0o644))
        .map_err(ProvisionError::io("chmod", &staged_path))?;
    let final_path = parent.join(file_name);
    staged
        .persist(&final_path)
        .map_err(|e| ProvisionError::Io {
            op: "move the seed into place at",
            path: final_path.clone(),
            source: e.error,
        })?;
    tracing::debug!(seed = %final_path.display(), instance_id = %spec.instance_id, "seed written");
    Ok(())
}

/// Deletes a seed; already gone is success.
pub fn remove(seed_iso: &Path) -> Result<(), ProvisionError> {
    match fs::remove_file(seed_iso) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ProvisionError::Io {
            op: "remove seed",
            path: seed_iso.to_path_buf(),
            source: e,
        }),
    }
}

/// RFC 1123 host name: dot-separated labels of 1–63 `[A-Za-z0-9-]`, not starting or ending with `-`.
fn check_hostname(name: &str) -> Result<(), ProvisionError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ProvisionError::invalid(
            "hostname",
            format!("`{name}` is not an RFC 1123 host name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn isoinfo(iso: &Path, args: &[&str]) -> String {
        String::from_utf8_lossy(&crate::iso9660::tests::isoinfo(iso, args)).into_owned()
    }

    fn spec(agent: PathBuf) -> SeedSpec {
        SeedSpec {
            instance_id: "0b9c0c3e-1d7a-4e5f-9a61-2f1d2c3b4a59".into(),
            hostname: "minion".into(),
            agent_binary: agent,
        }
    }

    #[test]
    fn seed_iso_has_label_documents_and_an_executable_agent() {
        if !minion_testenv::require(
            "seed_iso_has_label_documents_and_an_executable_agent",
            &[minion_testenv::Need::Program("isoinfo")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let agent = tmp.path().join("agent-src");
        fs::write(&agent, b"#!/bin/sh\necho stub agent\n").expect("agent");
        fs::set_permissions(&agent, fs::Permissions::from_mode(0o600)).expect("chmod"); // not exec at the source
        let iso = tmp.path().join("seed.iso");
        let s = spec(agent);
        write(&s, &iso).expect("seed written");

        let pvd = isoinfo(&iso, &["-d"]);
        assert!(pvd.contains("Volume id: cidata"), "{pvd}");
        assert!(
            pvd.contains("Rock Ridge signatures version"),
            "Rock Ridge missing: {pvd}"
        );
        // No Joliet: Linux reads Rock Ridge, and NoCloud needs only the label.
        assert!(pvd.contains("NO Joliet present"), "{pvd}");

        let listing = isoinfo(&iso, &["-R", "-l"]);
        let agent_line = listing
            .lines()
            .find(|l| l.trim_end().ends_with(AGENT_FILE))
            .expect("agent listed");
        assert!(
            agent_line.trim_start().starts_with("-rwxr-xr-x"),
            "agent not 0755: {agent_line}"
        );
        assert!(
            listing.contains("meta-data") && listing.contains("user-data"),
            "{listing}"
        );

        let meta = isoinfo(&iso, &["-R", "-x", "/meta-data"]);
        assert_eq!(
            meta,
            format!(
                "instance-id: {}\nlocal-hostname: minion\ndsmode: local\n",
                s.instance_id
            )
        );
        let agent_copy = isoinfo(&iso, &["-R", "-x", "/minion-agent"]);
        assert_eq!(agent_copy, "#!/bin/sh\necho stub agent\n");
        let user = isoinfo(&iso, &["-R", "-x", "/user-data"]);
        assert!(user.starts_with("#cloud-config\n"), "{user}");

        // Nothing left behind next to the ISO but the ISO and the agent source.
        let mut left: Vec<_> = fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["agent-src", "seed.iso"]);
        assert_eq!(
            fs::metadata(&iso).expect("iso").permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn user_data_is_cloud_config_that_mounts_cidata_and_starts_the_agent() {
        let docs = render(&spec(PathBuf::from("/x"))).expect("renders");
        assert!(
            docs.user_data.starts_with("#cloud-config\n"),
            "{}",
            docs.user_data
        );
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&docs.user_data).expect("user-data is YAML");
        let script = yaml["bootcmd"][0].as_str().expect("bootcmd[0] is a script");
        assert!(script.contains("LABEL=cidata /run/minion/seed"), "{script}");
        assert!(
            script.contains("agent=/run/minion/seed/minion-agent"),
            "{script}"
        );
        assert!(
            script.contains("mkdir /run/minion/agent.started"),
            "the guard shared with our images: {script}"
        );
        let meta: serde_yaml::Value =
            serde_yaml::from_str(&docs.meta_data).expect("meta-data is YAML");
        assert_eq!(
            meta["instance-id"].as_str(),
            Some("0b9c0c3e-1d7a-4e5f-9a61-2f1d2c3b4a59")
        );
        assert_eq!(meta["local-hostname"].as_str(), Some("minion"));
        // bootcmd (the agent) runs in cloud-init's local stage, not after networking.
        assert_eq!(meta["dsmode"].as_str(), Some("local"));
        // The script is valid sh.
        let status = Command::new("sh")
            .args(["-n", "-c", script])
            .status()
            .expect("sh -n");
        assert!(status.success(), "bootcmd script does not parse");
    }

    #[test]
    fn hostile_ids_and_hostnames_are_refused() {
        for id in [
            "",
            "a b",
            "x\ninstance-id: evil",
            "$(reboot)",
            "-rf",
            &"a".repeat(129),
        ] {
            let mut s = spec(PathBuf::from("/x"));
            s.instance_id = id.to_string();
            let err = render(&s).expect_err("bad id");
            assert!(
                err.to_string().starts_with("invalid instance_id"),
                "{id:?}: {err}"
            );
        }
        for host in ["", "-a", "a-", "a..b", "a_b", "x\ny", &"a".repeat(64)] {
            let mut s = spec(PathBuf::from("/x"));
            s.hostname = host.to_string();
            let err = render(&s).expect_err("bad hostname");
            assert!(
                err.to_string().starts_with("invalid hostname"),
                "{host:?}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_agent_binary_is_named_and_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let iso = tmp.path().join("seed.iso");
        let err = write(&spec(tmp.path().join("no-agent")), &iso).expect_err("no agent");
        assert!(err.to_string().contains("no-agent"), "{err}");
        assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 0);
    }

    #[test]
    fn a_failed_rename_leaves_no_seed_and_no_temporary() {
        let tmp = tempfile::tempdir().expect("tmp");
        let agent = tmp.path().join("agent-src");
        fs::write(&agent, b"agent").expect("agent");
        // A directory in the way: the ISO is written, the final rename fails.
        let iso = tmp.path().join("seed.iso");
        fs::create_dir(&iso).expect("mkdir");
        fs::write(iso.join("keep"), b"").expect("w");
        let err = write(&spec(agent), &iso).expect_err("rename onto a directory");
        assert!(
            err.to_string().starts_with(&format!(
                "cannot move the seed into place at {}",
                iso.display()
            )),
            "{err}"
        );
        let mut left: Vec<_> = fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["agent-src", "seed.iso"], "a temporary was left");
        assert!(iso.join("keep").exists());
    }

    #[test]
    fn rewriting_a_seed_replaces_it_whole() {
        if !minion_testenv::require(
            "rewriting_a_seed_replaces_it_whole",
            &[minion_testenv::Need::Program("isoinfo")],
        ) {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let agent = tmp.path().join("agent-src");
        fs::write(&agent, vec![7u8; 10_000]).expect("agent");
        let iso = tmp.path().join("seed.iso");
        write(&spec(agent.clone()), &iso).expect("first");
        fs::write(&agent, b"short").expect("agent");
        write(&spec(agent), &iso).expect("second");
        assert_eq!(isoinfo(&iso, &["-R", "-x", "/minion-agent"]), "short");
    }

    /// The real agent (2.9 MB, `scripts/build-agent.sh`) through `write`, 50 times, against the
    /// genisoimage pipeline this replaced (staging dir + copied agent + `genisoimage -J -R`).
    /// `cargo test -p minion-provisioning --lib -- --ignored --nocapture seed_write_timing`
    #[test]
    #[ignore = "timing; needs target/agent/minion-agent"]
    fn seed_write_timing() {
        use std::time::{Duration, Instant};
        let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/agent/minion-agent");
        assert!(
            agent.is_file(),
            "build the agent first: {}",
            agent.display()
        );
        let tmp = tempfile::tempdir().expect("tmp");
        let iso = tmp.path().join("seed.iso");
        let s = spec(agent.clone());
        // A fresh output path per run, as per job (a rename over an existing file makes ext4
        // flush the new one: auto_da_alloc); deletions happen outside the timed part.
        let median = |f: &mut dyn FnMut(&Path)| {
            let mut t: Vec<Duration> = (0..50)
                .map(|i| {
                    let out = tmp.path().join(format!("run-{i}.iso"));
                    let start = Instant::now();
                    f(&out);
                    let took = start.elapsed();
                    fs::remove_file(&out).expect("rm");
                    took
                })
                .collect();
            t.sort();
            (t[25], t[0], t[49])
        };
        let new = median(&mut |out| write(&s, out).expect("seed"));
        write(&s, &iso).expect("seed");
        let copy = Command::new("isoinfo")
            .arg("-i")
            .arg(&iso)
            .args(["-R", "-x", "/minion-agent"])
            .output()
            .expect("isoinfo")
            .stdout;
        assert_eq!(
            copy,
            fs::read(&agent).expect("agent"),
            "agent not byte-identical"
        );
        // For checking by hand (mount, blkid): MINION_KEEP_SEED=/tmp/seed.iso
        if let Some(keep) = std::env::var_os("MINION_KEEP_SEED") {
            fs::copy(&iso, keep).expect("keep the seed");
        }

        let docs = render(&s).expect("render");
        let old = median(&mut |final_path| {
            let staging = tempfile::tempdir_in(tmp.path()).expect("staging");
            let root = staging.path().join("root");
            fs::create_dir(&root).expect("mkdir");
            fs::write(root.join("meta-data"), &docs.meta_data).expect("w");
            fs::write(root.join("user-data"), &docs.user_data).expect("w");
            fs::copy(&agent, root.join(AGENT_FILE)).expect("copy");
            let out = staging.path().join("seed.iso");
            let st = Command::new("genisoimage")
                .args(["-quiet", "-V", "cidata", "-J", "-R", "-o"])
                .arg(&out)
                .arg(&root)
                .status()
                .expect("genisoimage");
            assert!(st.success());
            fs::rename(&out, final_path).expect("mv");
        });
        eprintln!(
            "seed::write (in-process ISO9660), 50 runs: median {:?} (min {:?}, max {:?})",
            new.0, new.1, new.2
        );
        eprintln!(
            "genisoimage pipeline (before),    50 runs: median {:?} (min {:?}, max {:?})",
            old.0, old.1, old.2
        );
    }

    #[test]
    fn remove_is_idempotent() {
        let tmp = tempfile::tempdir().expect("tmp");
        let iso = tmp.path().join("seed.iso");
        fs::write(&iso, b"x").expect("w");
        remove(&iso).expect("rm");
        remove(&iso).expect("rm again");
        assert!(!iso.exists());
    }
}
