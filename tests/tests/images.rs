//! Importing images end to end: the `cloud` recipe's disk (an MBR partition table, syslinux on a
//! FAT /boot, Debian's cloud kernel, systemd and cloud-init, nothing of Minion) is imported as a
//! plain file through the real CLI into a catalog of the test's own, validated by a real boot,
//! and an instance made from it boots from its own boot loader and runs the agent that rode in
//! on the seed through cloud-init. Bad disks are refused and leave nothing; an image in use is
//! not removed.
//!
//! Needs libvirtd, the `minimal` and `cloud` images (`make image`) and the agent.

mod common;

use std::path::Path;

use common::*;

/// A catalog of the test's own: `minimal` (for the pool) linked in from the shared one.
fn own_catalog() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("e2e-images-")
        .tempdir_in("/var/lib/minion")
        .expect("catalog");
    std::os::unix::fs::symlink(images_dir().join("minimal"), d.path().join("minimal"))
        .expect("link minimal");
    d
}

fn catalog_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("catalog")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_cloud_image_imported_as_a_file_boots_from_its_own_disk_through_cloud_init() {
    let test = "a_cloud_image_imported_as_a_file_boots_from_its_own_disk_through_cloud_init";
    if !image_env(test, "minimal", &[]) || !image_env(test, "cloud", &[]) {
        return;
    }
    let catalog = own_catalog();
    let extra = format!(
        "images_dir = {:?}\nstart = \"boot\"\n[instances]\nstart = \"boot\"\nmemory_mib = 1024",
        catalog.path()
    );
    let d = Daemon::start_with(1, 0, &extra);
    let disk = images_dir().join("cloud").join("disk.qcow2");

    // A disk with a backing file (it could read any host file) is refused; nothing is left.
    let scratch = tempfile::tempdir().expect("scratch");
    let sneaky = scratch.path().join("sneaky.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&disk)
        .args(["-F", "qcow2"])
        .arg(&sneaky)
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let before = catalog_entries(catalog.path());
    let o = d.cli(&[
        "image",
        "import",
        sneaky.to_str().expect("utf8"),
        "--name",
        "sneaky",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("backing file"),
        "{}",
        output_text(&o)
    );
    assert_eq!(
        catalog_entries(catalog.path()),
        before,
        "a refused import leaves nothing"
    );

    // The real thing, streamed from the file.
    let t = Instant::now();
    let o = d.cli(&[
        "image",
        "import",
        disk.to_str().expect("utf8"),
        "--name",
        "cloud-imported",
        "--json",
    ]);
    assert!(o.status.success(), "{}\n{}", output_text(&o), d.log());
    let imported: Value = serde_json::from_slice(&o.stdout).expect("json");
    let i = &imported[0];
    assert_eq!(i["name"], "cloud-imported");
    assert_eq!(i["source"], "import");
    assert_eq!(i["agent_start"], "cloud-init");
    assert_eq!(i["format"], "qcow2");
    assert_eq!(i["validation"], "ok", "{i:#}\n{}", d.log());
    assert!(i["validated_ready_ms"].as_u64().unwrap_or(0) > 0, "{i:#}");
    let sha = std::process::Command::new("sha256sum")
        .arg(&disk)
        .output()
        .expect("sha256sum");
    assert_eq!(
        i["sha256"].as_str().unwrap_or_default(),
        String::from_utf8_lossy(&sha.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
    );
    eprintln!("import + validation: {:.1} s", t.elapsed().as_secs_f64());
    let listed = d.json(&["image", "list"]);
    let row = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["name"] == "cloud-imported")
        .cloned()
        .expect("listed");
    assert_eq!(row["validation"], "ok");
    // Importing the same name again is refused.
    let again = d.cli(&[
        "image",
        "import",
        disk.to_str().expect("utf8"),
        "--name",
        "cloud-imported",
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", output_text(&again));

    // An instance of it: its own boot loader, cloud-init, the agent from the seed.
    let inst = d.json(&["instance", "create", "cloud-imported", "--name", "cloudy"]);
    assert_eq!(inst["state"], "ready", "{inst:#}");
    let exec = |cmd: &str| d.cli(&["instance", "exec", "cloudy", "--", "sh", "-c", cmd]);
    let o = exec("cat /proc/cmdline");
    assert!(o.status.success(), "{}", output_text(&o));
    let cmdline = String::from_utf8_lossy(&o.stdout).to_string();
    // syslinux names what it loaded; a direct kernel boot has no BOOT_IMAGE.
    assert!(cmdline.contains("BOOT_IMAGE=/vmlinuz"), "{cmdline}");
    assert!(cmdline.contains("root=LABEL=cloud-root"), "{cmdline}");
    let o = exec("ls /etc/systemd/system/ | grep -c minion || true; systemctl is-active minion-agent-cloudinit; hostname");
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"0"),
        "no Minion unit in the image: {said}"
    );
    assert_eq!(
        lines.get(1),
        Some(&"active"),
        "cloud-init started the agent: {said}"
    );
    assert_eq!(lines.get(2), Some(&"cloudy"), "{said}");

    // In use: not removed.
    let rm = d.cli(&["image", "remove", "cloud-imported"]);
    assert_eq!(rm.status.code(), Some(2), "{}", output_text(&rm));
    assert!(
        output_text(&rm).contains("instance cloudy"),
        "{}",
        output_text(&rm)
    );
    let rm = d.cli(&["instance", "remove", "cloudy"]);
    assert!(rm.status.success(), "{}", output_text(&rm));
    let rm = d.cli(&["image", "remove", "cloud-imported"]);
    assert!(rm.status.success(), "{}", output_text(&rm));
    assert_eq!(catalog_entries(catalog.path()), ["minimal"]);
    // A pool's image is not removed either.
    let rm = d.cli(&["image", "remove", "minimal"]);
    assert_eq!(rm.status.code(), Some(2), "{}", output_text(&rm));
    assert!(
        output_text(&rm).contains("pool minimal"),
        "{}",
        output_text(&rm)
    );
    until("no VM left", TEARDOWN_AFTER_END, || {
        d.domains().is_empty() && d.vm_ids().is_empty()
    });
}

#[test]
fn image_build_shows_stages_and_miniond_validates_what_it_built() {
    let test = "image_build_shows_stages_and_miniond_validates_what_it_built";
    if !image_env(test, "minimal", &[]) {
        return;
    }
    let d = Daemon::start_with(1, 0, "start = \"boot\"\n[instances]\nstart = \"boot\"");
    let recipes = workspace_root().join("images");
    let o = d.cli(&[
        "image",
        "build",
        "minimal",
        "--recipes",
        recipes.to_str().expect("utf8"),
        "--json",
    ]);
    assert!(o.status.success(), "{}\n{}", output_text(&o), d.log());
    let err = String::from_utf8_lossy(&o.stderr);
    // Built by `make image` before the suite: the recipe is cached, and says so in one line.
    assert!(err.contains("minimal: cached"), "{err}");
    assert!(!err.contains("debootstrap: I:"), "no raw build log: {err}");
    let shown: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(shown[0]["name"], "minimal");
    assert_eq!(shown[0]["source"], "recipe");
    assert_eq!(shown[0]["validation"], "ok", "{shown:#}");
    assert!(shown[0]["validated_ready_ms"].as_u64().unwrap_or(0) > 0);
    let listed = d.json(&["image", "list"]);
    let minimal = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["name"] == "minimal")
        .cloned()
        .expect("minimal listed");
    assert_eq!(minimal["validation"], "ok", "{minimal:#}");
    // A variant with no recipe is refused before anything runs.
    let bad = d.cli(&["image", "build", "nope"]);
    assert_eq!(bad.status.code(), Some(2), "{}", output_text(&bad));
}

/// A catalog whose `minimal` is a hard-linked copy of the shared build without its validation
/// record (as `make image` leaves a new build).
fn unvalidated_minimal() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("e2e-unvalidated-")
        .tempdir_in("/var/lib/minion")
        .expect("catalog");
    let src = images_dir()
        .join("minimal")
        .canonicalize()
        .expect("minimal");
    let name = src.file_name().expect("name").to_owned();
    let dst = d.path().join(&name);
    std::fs::create_dir(&dst).expect("mkdir");
    for e in std::fs::read_dir(&src).expect("read").flatten() {
        let f = e.file_name();
        let f = f.to_string_lossy();
        if !f.starts_with("validation") && !f.starts_with('.') {
            std::fs::hard_link(e.path(), dst.join(&*f)).expect("link");
        }
    }
    std::os::unix::fs::symlink(&name, d.path().join("minimal")).expect("symlink");
    d
}

fn listed_validation(d: &Daemon) -> Value {
    d.json(&["image", "list"])
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["name"] == "minimal")
        .cloned()
        .expect("minimal listed")
}

#[test]
fn an_image_with_no_validation_record_is_validated_once_before_its_first_vm() {
    let test = "an_image_with_no_validation_record_is_validated_once_before_its_first_vm";
    if !image_env(test, "minimal", &[]) {
        return;
    }
    let catalog = unvalidated_minimal();
    let record = catalog.path().join("minimal").join("validation.json");
    let extra = format!("images_dir = {:?}\nstart = \"boot\"", catalog.path());
    let d = Daemon::start_with(2, 0, &extra);
    assert_eq!(listed_validation(&d)["validation"], "", "not validated yet");

    // Two jobs at once: one validation boot, then both run.
    let repo = task_repo(PASSING);
    let ids: Vec<String> = (0..2).map(|_| d.submit(repo.path(), &[])).collect();
    for id in &ids {
        let j = d.wait_state(id, &["FINISHED", "FAILED"], Duration::from_secs(240));
        assert_eq!(j["state"], "FINISHED", "{j:#}\n{}", d.log());
    }
    let shown = listed_validation(&d);
    assert_eq!(shown["validation"], "ok", "{shown:#}");
    assert!(
        shown["validated_ready_ms"].as_u64().unwrap_or(0) > 0,
        "{shown:#}"
    );
    assert!(record.exists());
    let boots = d.log().matches("validating the image").count();
    assert_eq!(boots, 1, "validated {boots} times:\n{}", d.log());
    // Its validation VM went like any other.
    until("no VM left", TEARDOWN_AFTER_END, || d.domains().is_empty());

    // A record left pending (a daemon died during the validation) is validated again.
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("record")).expect("json");
    v["state"] = "pending".into();
    std::fs::write(&record, v.to_string()).expect("write");
    let id = d.submit(repo.path(), &[]);
    let j = d.wait_state(&id, &["FINISHED", "FAILED"], Duration::from_secs(240));
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    assert_eq!(d.log().matches("validating the image").count(), 2);
    assert_eq!(listed_validation(&d)["validation"], "ok");

    // A failed one is refused at submission, with why.
    v["state"] = "failed".into();
    v["reason"] = "no Ready within 120 s".into();
    std::fs::write(&record, v.to_string()).expect("write");
    let refused = d.cli(&Daemon::submit_args(repo.path(), &[]));
    assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("no Ready within 120 s"),
        "{}",
        output_text(&refused)
    );
    // Validated again on demand, it takes work again.
    let again = d.json(&["image", "validate", "minimal"]);
    assert_eq!(again[0]["validation"], "ok", "{again:#}");
    let id = d.submit(repo.path(), &[]);
    let j = d.wait_state(&id, &["FINISHED", "FAILED"], Duration::from_secs(240));
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    until("no VM left", TEARDOWN_AFTER_END, || d.domains().is_empty());
}
