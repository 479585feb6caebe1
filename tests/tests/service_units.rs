//! The systemd units `make install` puts in place: systemd's own checker accepts them, and
//! their hardening keeps what miniond needs to drive libvirt.

mod common;
use common::*;
use minion_testenv::Need;

/// `dist/UNIT` with its binaries pointed at this build, in `dir`.
fn unit_here(dir: &Path, unit: &str) -> PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("dist").join(unit)).expect("unit");
    let bin = format!("{}/", bin_dir().display());
    let out = dir.join(unit);
    std::fs::write(&out, text.replace("/usr/local/bin/", &bin)).expect("write");
    out
}

#[test]
fn the_units_pass_systemd_analyze_and_keep_what_libvirt_needs() {
    let (miniond, minion) = binaries();
    let make = "cargo build -p miniond -p minion-cli -p minion-trigger";
    let trigger = bin_dir().join("minion-trigger");
    if !minion_testenv::require(
        "the_units_pass_systemd_analyze_and_keep_what_libvirt_needs",
        &[
            Need::Program("systemd-analyze"),
            Need::File {
                path: &miniond,
                make,
            },
            Need::File {
                path: &minion,
                make,
            },
            Need::File {
                path: &trigger,
                make,
            },
        ],
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let units: Vec<PathBuf> = ["miniond.service", "minion-trigger.service"]
        .iter()
        .map(|u| unit_here(dir.path(), u))
        .collect();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    for unit in &units {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=40"])
            .arg(unit)
            .output()
            .expect("systemd-analyze security");
        assert!(
            out.status.success(),
            "{}: exposure above 4.0 (threshold 40 in tenths):\n{}",
            unit.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let miniond_unit = std::fs::read_to_string(&units[0]).expect("read");
    for needed in [
        "ReadWritePaths=/run/libvirt",
        "RuntimeDirectory=minion",
        "StateDirectory=minion",
        "CacheDirectory=minion",
        "AF_UNIX",
        "CAP_CHOWN",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            miniond_unit.contains(needed),
            "miniond.service lacks {needed}"
        );
    }
}
