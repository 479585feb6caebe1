//! Pools over `[hosts]`: three libvirt hosts on this machine (`scripts/fake-hosts.sh`: each its
//! own network namespace with its own address and a mount namespace with its own libvirt
//! directories and storage, libvirtd and virtlogd reachable only as qemu+tcp on its address),
//! the controller in the root namespace reaching them only through libvirt.
//!
//! One test, in phases (the hosts are shared): a host holding other bytes under the image's
//! volume name is not used; 12 jobs over the two good hosts never exceed 2 VMs per host; the
//! image pushed to the third host makes it usable; a host's link cut mid-job fails its jobs
//! (host lost), they are requeued and finish elsewhere; the link restored, the host's leftovers
//! are reaped before it takes work. No domain or volume of the daemon is left on any host.
//! A `snapshot` pool over the hosts gets a snapshot on each host its VMs run on (storage
//! volumes there) and its jobs are restored from it; the cut link's job is one of those, which
//! have no autodestroy: their agent stops them when libvirtd drops the channel.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const HOSTS: usize = 3;

fn uri(k: usize) -> String {
    format!("qemu+tcp://10.77.{k}.2/system")
}

fn fake_hosts(args: &[&str]) {
    let out = Command::new(workspace_root().join("scripts/fake-hosts.sh"))
        .args(args)
        .output()
        .expect("fake-hosts.sh");
    assert!(
        out.status.success(),
        "fake-hosts.sh {args:?}: {}",
        output_text(&out)
    );
}

/// Removes the fake hosts however the test ends.
struct FakeHosts;

impl Drop for FakeHosts {
    fn drop(&mut self) {
        let _ = Command::new(workspace_root().join("scripts/fake-hosts.sh"))
            .arg("down")
            .output();
    }
}

/// `[hosts.NAME]` tables for (name, URI) pairs, each taking `max_vms` VMs.
fn hosts_toml(hosts: &[(String, String)], max_vms: u32) -> String {
    hosts
        .iter()
        .map(|(name, uri)| format!("\n[hosts.{name}]\nuri = {uri:?}\nmax_vms = {max_vms}\n"))
        .collect()
}

/// A pool of `minimal` VMs (1 vCPU, 512 MiB) over `hosts`, with `settings` (TOML lines).
fn pool_toml(name: &str, hosts: &[&str], settings: &str) -> String {
    format!(
        "\n[pools.{name}]\nimage = \"minimal\"\nhosts = {hosts:?}\nvcpus = 1\nmemory_mib = 512\n\
         default_timeout_seconds = 300\n{settings}\n"
    )
}

/// Whether this machine can make fake hosts and boot `minimal` on them (else the test skips,
/// or fails under CI); `extra` adds needs.
fn hosts_env(t: &str, extra: &[minion_testenv::Need]) -> bool {
    let mut needs = vec![
        minion_testenv::Need::Program("ip"),
        minion_testenv::Need::Program("unshare"),
        minion_testenv::Need::Program("tini"),
    ];
    needs.extend_from_slice(extra);
    image_env(t, "minimal", &needs)
}

/// Fake hosts made by `fake-hosts.sh ARGS` (any left over removed first), removed again when
/// the guard drops.
fn fake_hosts_up(args: &[&str]) -> FakeHosts {
    fake_hosts(&["down"]);
    let guard = FakeHosts;
    fake_hosts(args);
    guard
}

fn virsh(k: usize, args: &[&str]) -> Result<String, String> {
    virsh_at(&uri(k), args)
}

/// `virsh ARGS` on the libvirt at `uri`, given up after 10 s: its output, or why not.
fn virsh_at(uri: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .arg("10")
        .arg("virsh")
        .args(["-q", "-c", uri])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(output_text(&out))
    }
}

/// `minion-…` domains running on host k.
fn domains_on(k: usize) -> Result<Vec<String>, String> {
    Ok(virsh(k, &["list", "--name"])?
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("minion-"))
        .map(String::from)
        .collect())
}

/// Volumes of storage pool `minion` on host k that are not image volumes.
fn vm_volumes_on(k: usize) -> Vec<String> {
    let _ = virsh(k, &["pool-refresh", "minion"]);
    virsh(k, &["vol-list", "minion"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.starts_with("minion-")
                && !n.starts_with("minion-image-")
                && !n.starts_with("minion-snap-")
        })
        .map(String::from)
        .collect()
}

/// Waits for each of `ids` to end; each must end FINISHED.
fn all_finish(d: &Daemon, ids: &[String], within: Duration) {
    for id in ids {
        let j = d.wait_state(
            id,
            &["FINISHED", "FAILED", "CANCELLED", "TIMED_OUT"],
            within,
        );
        assert_eq!(j["state"], "FINISHED", "{j:#}\n{}", d.log());
    }
}

/// The keys of the whole snapshots on host k (their marker volume is there).
fn snapshots_on(k: usize) -> Vec<String> {
    let _ = virsh(k, &["pool-refresh", "minion"]);
    virsh(k, &["vol-list", "minion"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("minion-snap-") && n.ends_with(".json"))
        .map(String::from)
        .collect()
}

/// The BOOTING event's detail of job `j` (its first attempt's).
fn booting_detail(j: &serde_json::Value) -> String {
    j["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .find(|e| e["state"] == "BOOTING")
                .and_then(|e| e["message"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

/// The qemu processes inside host k's namespace that run job `id`'s domain (seen from here,
/// whatever its link).
fn qemu_of_on(k: usize, id: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", &format!("mhost{k}")])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&format!("guest=minion-{id}")))
                .unwrap_or(false)
        })
        .collect()
}

/// Samples every host's domains: the most seen at once per host, and which host each job's
/// domain ran on.
type Seen = (BTreeMap<usize, usize>, BTreeMap<String, BTreeSet<usize>>);

struct HostSampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostSampler {
    fn start() -> HostSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new((BTreeMap::new(), BTreeMap::new())));
        let (flag, s) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                for k in 1..=HOSTS {
                    if let Ok(doms) = domains_on(k) {
                        let mut g = s.lock().expect("lock");
                        let max = g.0.entry(k).or_insert(0);
                        *max = (*max).max(doms.len());
                        for d in doms {
                            g.1.entry(d).or_default().insert(k);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        HostSampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn max_per_host(&self) -> BTreeMap<usize, usize> {
        self.seen.lock().expect("lock").0.clone()
    }

    fn hosts_of(&self, job: &str) -> BTreeSet<usize> {
        self.seen
            .lock()
            .expect("lock")
            .1
            .get(&format!("minion-{job}"))
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for HostSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SLEEPING: &str = r#"---
name: sleeping
namespace: scratch
desc: runs long enough for its host's link to be cut
maintainer:
  - minion
input:
  args: [koji_build]
actions:
  - name: work
    shell:
      - echo "started"
      - sleep 45
      - echo "slept"
"#;

#[test]
fn jobs_spread_over_three_libvirt_hosts_reached_only_through_libvirt() {
    let t = "jobs_spread_over_three_libvirt_hosts_reached_only_through_libvirt";
    if !hosts_env(t, &[]) {
        return;
    }
    let _hosts = fake_hosts_up(&["up", &HOSTS.to_string()]);

    // mhost3 holds other bytes under the disk's volume name: it must not be used.
    let img = images_dir().join("minimal");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(img.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let disk_sha = manifest["sha256"].as_str().expect("sha256").to_string();
    let wrong = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(wrong.path(), vec![7u8; 1 << 20]).expect("write");
    let disk_vol = format!("minion-image-{disk_sha}.disk");
    virsh(
        3,
        &[
            "vol-create-as",
            "minion",
            &disk_vol,
            "1M",
            "--format",
            "raw",
        ],
    )
    .expect("vol");
    virsh(
        3,
        &[
            "vol-upload",
            "--pool",
            "minion",
            &disk_vol,
            wrong.path().to_str().expect("utf8"),
        ],
    )
    .expect("upload");

    let all = ["mhost1", "mhost2", "mhost3"];
    let hosts: Vec<(String, String)> = (1..=HOSTS).map(|k| (format!("mhost{k}"), uri(k))).collect();
    let mut d = Daemon::prepare(
        1,
        0,
        &format!(
            "{}{}{}",
            pool_toml("spread", &all, "max_vms = 6\nstart = \"boot\""),
            pool_toml("warm", &all, "max_vms = 6\nstart = \"snapshot\""),
            hosts_toml(&hosts, 2)
        ),
    );
    d.spawn();

    // The image goes to the two hosts that lack it, through libvirt.
    let push = d.cli(&["image", "push", "minimal", "mhost1", "mhost2"]);
    assert!(push.status.success(), "push: {}", output_text(&push));
    let pushed = output_text(&push);
    assert_eq!(pushed.matches("pushed and verified").count(), 2, "{pushed}");
    until(
        "every host up, the image checked on each",
        Duration::from_secs(90),
        || {
            d.json(&["host", "list"]).as_array().is_some_and(|a| {
                // Beside host `local`, this machine, where the harness's own pool runs.
                let fake: Vec<&Value> = a
                    .iter()
                    .filter(|h| h["name"].as_str().is_some_and(|n| n.starts_with("mhost")))
                    .collect();
                fake.len() == HOSTS
                    && fake.iter().all(|h| {
                        h["state"] == "up" && h["images"].as_array().is_some_and(|i| !i.is_empty())
                    })
            })
        },
    );
    let hosts = d.json(&["host", "list"]);
    let host = |name: &str| {
        hosts
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {hosts:#}"))
    };
    assert_eq!(host("mhost1")["images"][0]["verified"], true, "{hosts:#}");
    let refused = &host("mhost3")["images"][0];
    assert_eq!(refused["verified"], false, "{hosts:#}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or("")
            .contains("holds sha256"),
        "{hosts:#}"
    );
    let pools = d.json(&["pool", "list"]);
    let spread = pools
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "spread"))
        .cloned()
        .expect("pool spread");
    let unused: Vec<_> = spread["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter(|h| h["usable"] == false)
        .collect();
    assert_eq!(unused.len(), 1, "{spread:#}");
    assert_eq!(unused[0]["name"], "mhost3", "{spread:#}");
    assert!(
        unused[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains(&disk_vol),
        "{spread:#}"
    );

    // 12 jobs, 2 good hosts of 2 VMs each: never more than 2 at once on a host, none on mhost3.
    let sampler = HostSampler::start();
    let repo = task_repo(PASSING);
    let ids: Vec<String> = (0..12)
        .map(|_| d.submit(repo.path(), &["-p", "spread"]))
        .collect();
    all_finish(&d, &ids, Duration::from_secs(600));
    let max = sampler.max_per_host();
    assert!(
        max.values().all(|&n| n <= 2),
        "more than 2 VMs on a host: {max:?}"
    );
    assert_eq!(
        max.get(&3).copied().unwrap_or(0),
        0,
        "mhost3 was used: {max:?}"
    );
    let used: BTreeSet<usize> = ids.iter().flat_map(|id| sampler.hosts_of(id)).collect();
    assert_eq!(used, BTreeSet::from([1, 2]), "hosts used: {used:?}");

    // Pushed again, mhost3's wrong volume is replaced and it takes work.
    let push = d.cli(&["image", "push", "minimal", "mhost3"]);
    assert!(push.status.success(), "push: {}", output_text(&push));
    let disk_on_3 = virsh(3, &["vol-path", "--pool", "minion", &disk_vol]).expect("vol-path");
    assert!(!disk_on_3.trim().is_empty());
    let listed = virsh(3, &["vol-info", "--pool", "minion", &disk_vol, "--bytes"]).expect("info");
    assert!(
        !listed.contains("1048576 bytes"),
        "still the wrong bytes: {listed}"
    );

    // A snapshot pool over the hosts: its first jobs boot and have a template made on each
    // host they ran on; then its jobs are restored there.
    let first: Vec<String> = (0..3)
        .map(|_| d.submit(repo.path(), &["-p", "warm"]))
        .collect();
    all_finish(&d, &first, Duration::from_secs(300));
    until("a snapshot on each host", Duration::from_secs(300), || {
        (1..=HOSTS).all(|k| snapshots_on(k).len() == 1)
    });
    let warm: Vec<String> = (0..6)
        .map(|_| d.submit(repo.path(), &["-p", "warm"]))
        .collect();
    for id in &warm {
        let j = d.wait_state(
            id,
            &["FINISHED", "FAILED", "CANCELLED", "TIMED_OUT"],
            Duration::from_secs(300),
        );
        assert_eq!(j["state"], "FINISHED", "{j:#}\n{}", d.log());
        assert_eq!(
            booting_detail(&j),
            "restored from a snapshot",
            "{j:#}\n{}",
            d.log()
        );
    }
    let used: BTreeSet<usize> = warm.iter().flat_map(|id| sampler.hosts_of(id)).collect();
    assert!(used.len() >= 2, "restored on hosts {used:?}");
    let pools = d.json(&["pool", "list"]);
    let warm_pool = pools
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "warm"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(warm_pool["snapshot"], "ready", "{warm_pool:#}");

    // Three long jobs, one per host, restored; cut the link of one of their hosts mid-job.
    let long_repo = task_repo(SLEEPING);
    let long: Vec<String> = (0..3)
        .map(|_| d.submit(long_repo.path(), &["-p", "warm"]))
        .collect();
    for id in &long {
        d.wait_state(id, &["RUNNING"], Duration::from_secs(180));
    }
    let placed: BTreeMap<&String, usize> = long
        .iter()
        .filter_map(|id| {
            (1..=HOSTS)
                .find(|&k| {
                    domains_on(k)
                        .unwrap_or_default()
                        .contains(&format!("minion-{id}"))
                })
                .map(|k| (id, k))
        })
        .collect();
    assert_eq!(placed.len(), 3, "each long job on a host: {placed:?}");
    let k = *placed.values().next().expect("a host");
    let victims: Vec<&String> = placed
        .iter()
        .filter(|(_, &h)| h == k)
        .map(|(id, _)| *id)
        .collect();
    fake_hosts(&["cut", &k.to_string()]);
    let cut = Instant::now();
    let name = format!("mhost{k}");
    until("the cut host marked down", Duration::from_secs(60), || {
        d.json(&["host", "list"]).as_array().is_some_and(|a| {
            a.iter()
                .any(|h| h["name"] == name.as_str() && h["state"] == "down")
        })
    });
    let detected = cut.elapsed();
    // Nothing runs twice at once: by the time a lost job can be requeued, its VM on the cut
    // host has stopped (its agent sees the channel close when the host's libvirtd drops the
    // connection, its keepalive shorter than our bound).
    for id in &victims {
        until(
            "the lost job failed (host lost)",
            Duration::from_secs(60),
            || d.job(id).to_string().contains("host lost"),
        );
        let running = qemu_of_on(k, id);
        assert!(
            running.is_empty(),
            "{id} still runs on {name} after its job was failed: {running:?}"
        );
    }
    for id in &long {
        let j = d.wait_state(
            id,
            &["FINISHED", "CANCELLED", "TIMED_OUT"],
            Duration::from_secs(400),
        );
        assert_eq!(j["state"], "FINISHED", "{j:#}\n{}", d.log());
        assert_eq!(booting_detail(&j), "restored from a snapshot", "{j:#}");
        let st = states(&j);
        if victims.contains(&id) {
            let text = j.to_string();
            assert!(text.contains("host lost"), "{j:#}");
            assert!(st.iter().any(|s| s == "FAILED"), "{st:?}");
            let on = sampler.hosts_of(id);
            assert!(on.len() == 2 && on.contains(&k), "ran on {on:?}");
        } else {
            assert!(!st.iter().any(|s| s == "FAILED"), "{id}: {st:?}");
        }
    }
    eprintln!("host {name} marked down {detected:?} after its link was cut");

    // Back: its leftovers (the lost VMs' volumes) are reaped before it is up again.
    fake_hosts(&["mend", &k.to_string()]);
    until(
        "the host up again, nothing of ours left on it",
        Duration::from_secs(90),
        || {
            d.json(&["host", "list"]).as_array().is_some_and(|a| {
                a.iter()
                    .any(|h| h["name"] == name.as_str() && h["state"] == "up")
            })
        },
    );
    assert!(
        vm_volumes_on(k).is_empty(),
        "left on {name}: {:?}",
        vm_volumes_on(k)
    );
    assert_eq!(snapshots_on(k).len(), 1, "its whole snapshot stays");
    drop(sampler);
    d.terminate();
    for k in 1..=HOSTS {
        assert_eq!(
            domains_on(k).expect("domains"),
            Vec::<String>::new(),
            "mhost{k}"
        );
        assert_eq!(vm_volumes_on(k), Vec::<String>::new(), "mhost{k}");
    }

    // Started again as it was: the hosts' snapshots are found, restored from, and said ready.
    d.spawn();
    until("every host up again", Duration::from_secs(90), || {
        d.json(&["host", "list"])
            .as_array()
            .is_some_and(|a| a.iter().all(|h| h["state"] == "up"))
    });
    let again = d.submit(repo.path(), &["-p", "warm"]);
    all_finish(&d, std::slice::from_ref(&again), Duration::from_secs(300));
    assert_eq!(
        booting_detail(&d.job(&again)),
        "restored from a snapshot",
        "{}",
        d.log()
    );
    let warm_pool = d
        .json(&["pool", "list"])
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "warm").cloned())
        .unwrap_or_default();
    assert_eq!(warm_pool["snapshot"], "ready", "{warm_pool:#}");
    d.terminate();

    // A new shape for the snapshot pool: at the next start, the hosts' snapshots are no pool's
    // any more and go.
    let cfg = std::fs::read_to_string(&d.config).expect("config");
    let at = cfg.find("[pools.warm]").expect("the warm pool");
    let (head, tail) = cfg.split_at(at);
    let changed = format!(
        "{head}{}",
        tail.replacen("memory_mib = 512", "memory_mib = 640", 1)
    );
    assert_ne!(changed, cfg);
    std::fs::write(&d.config, changed).expect("write");
    d.spawn();
    until("every host up again", Duration::from_secs(90), || {
        d.json(&["host", "list"])
            .as_array()
            .is_some_and(|a| a.iter().all(|h| h["state"] == "up"))
    });
    for k in 1..=HOSTS {
        assert_eq!(
            snapshots_on(k),
            Vec::<String>::new(),
            "mhost{k}: a stale snapshot stays"
        );
    }
    d.terminate();
}

/// A libvirt PKI for a TLS host at `ip` (openssl, RSA as libvirt's docs use): the CA, the
/// host's certificate and key, and client directories for `pkipath=`: `client` (CN
/// minion-controller, the DN the host allows), `intruder` (same CA, another DN) and `stranger`
/// (the right DN from another CA).
fn libvirt_pki(dir: &std::path::Path, ip: &str) {
    let run = |args: &[&str]| openssl(dir, args);
    let ca = |name: &str| {
        run(&[
            "req",
            "-x509",
            "-days",
            "2",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN=minion test libvirt CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
        ]);
    };
    let signed = |ca: &str, cn: &str, ext: &str, cert: &str, key: &str| {
        std::fs::write(dir.join("ext.cnf"), ext).expect("ext file");
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            key,
            "-out",
            "req.csr",
        ]);
        run(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "req.csr",
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-extfile",
            "ext.cnf",
            "-out",
            cert,
        ]);
    };
    let usage = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n";
    ca("good");
    ca("other");
    std::fs::copy(dir.join("good-ca.pem"), dir.join("cacert.pem")).expect("cacert");
    signed(
        "good",
        &format!("mhost {ip}"),
        &format!("{usage}extendedKeyUsage=serverAuth\nsubjectAltName=IP:{ip}\n"),
        "servercert.pem",
        "serverkey.pem",
    );
    for (sub, ca, cn) in [
        ("client", "good", "minion-controller"),
        ("intruder", "good", "intruder"),
        ("stranger", "other", "minion-controller"),
    ] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        // libvirt checks its own certificate against the CA it is given: each its own.
        std::fs::copy(
            dir.join(format!("{ca}-ca.pem")),
            dir.join(sub).join("cacert.pem"),
        )
        .expect("cacert");
        signed(
            ca,
            cn,
            &format!("{usage}extendedKeyUsage=clientAuth\n"),
            &format!("{sub}/clientcert.pem"),
            &format!("{sub}/clientkey.pem"),
        );
    }
}

#[test]
fn a_host_over_tls_runs_jobs_and_refuses_certificates_it_does_not_allow() {
    let t = "a_host_over_tls_runs_jobs_and_refuses_certificates_it_does_not_allow";
    if !hosts_env(t, &[minion_testenv::Need::Program("openssl")]) {
        return;
    }
    const K: usize = 4;
    let ip = format!("10.77.{K}.2");
    let pki = tempfile::tempdir().expect("tmp");
    libvirt_pki(pki.path(), &ip);
    let _hosts = fake_hosts_up(&["up-tls", &K.to_string(), pki.path().to_str().expect("utf8")]);
    let tls_uri = |sub: &str| {
        format!(
            "qemu+tls://{ip}/system?pkipath={}",
            pki.path().join(sub).display()
        )
    };
    // TLS only: the plain TCP port is closed.
    let plain = virsh_at(&format!("qemu+tcp://{ip}/system"), &["version"]);
    assert!(plain.is_err(), "plain tcp answered: {plain:?}");

    let certs = ["client", "intruder", "stranger"];
    let hosts: Vec<(String, String)> = certs.iter().map(|c| (c.to_string(), tls_uri(c))).collect();
    let mut d = Daemon::prepare(
        1,
        0,
        &format!(
            "{}{}",
            pool_toml("secure", &certs, "max_vms = 2\nstart = \"boot\""),
            hosts_toml(&hosts, 2)
        ),
    );
    d.spawn();
    push_and_run_two(&d, "client", "secure");
    // The other two certificates never got a connection: down, saying why.
    let hosts = d.json(&["host", "list"]);
    for refused in ["intruder", "stranger"] {
        let h = hosts
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == refused))
            .cloned()
            .unwrap_or_else(|| panic!("{refused} in {hosts:#}"));
        assert_eq!(h["state"], "down", "{h:#}");
        assert!(
            !h["last_error"].as_str().unwrap_or("").is_empty(),
            "no reason for {refused}: {h:#}"
        );
        eprintln!("{refused}: {}", h["last_error"]);
    }
    d.terminate();
    assert_nothing_left_at(&tls_uri("client"));
}

/// Once `host` is up: the image pushed there (through whatever transport its URI names) and two
/// jobs of `pool` run to FINISHED.
fn push_and_run_two(d: &Daemon, host: &str, pool: &str) {
    until(&format!("host {host} up"), Duration::from_secs(60), || {
        d.json(&["host", "list"])
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h["name"] == host && h["state"] == "up"))
    });
    let push = d.cli(&["image", "push", "minimal", host]);
    assert!(
        push.status.success(),
        "push to {host}: {}",
        output_text(&push)
    );
    let repo = task_repo(PASSING);
    let ids: Vec<String> = (0..2)
        .map(|_| d.submit(repo.path(), &["-p", pool]))
        .collect();
    all_finish(d, &ids, Duration::from_secs(300));
}

/// No domain and no VM volume (images may stay) of any daemon on the libvirt at `uri`.
fn assert_nothing_left_at(uri: &str) {
    let virsh =
        |args: &[&str]| virsh_at(uri, args).unwrap_or_else(|e| panic!("virsh {args:?}: {e}"));
    let left: Vec<String> = virsh(&["list", "--all", "--name"])
        .lines()
        .filter(|l| l.starts_with("minion-"))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "domains left: {left:?}");
    let _ = virsh(&["pool-refresh", "minion"]);
    let vols: Vec<String> = virsh(&["vol-list", "minion"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("minion-") && !n.starts_with("minion-image-"))
        .map(String::from)
        .collect();
    assert!(vols.is_empty(), "volumes left: {vols:?}");
}

/// A new ed25519 key pair `dir/NAME` (no passphrase).
fn ssh_key(dir: &Path, name: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(dir.join(name))
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn a_host_over_ssh_runs_jobs_and_refuses_keys_it_does_not_know() {
    let t = "a_host_over_ssh_runs_jobs_and_refuses_keys_it_does_not_know";
    if !hosts_env(
        t,
        &[
            minion_testenv::Need::Program("ssh-keygen"),
            minion_testenv::Need::Program("sshd"),
            minion_testenv::Need::Program("ssh"),
        ],
    ) {
        return;
    }
    const K: usize = 5;
    let ip = format!("10.77.{K}.2");
    let keys = tempfile::tempdir().expect("tmp");
    ssh_key(keys.path(), "id_ed25519");
    ssh_key(keys.path(), "stranger");
    let _hosts = fake_hosts_up(&[
        "up-ssh",
        &K.to_string(),
        keys.path().to_str().expect("utf8"),
    ]);
    // libvirt runs the `ssh` program (qemu+ssh://); `up-ssh` wrote KEYS/ssh, one that trusts
    // only the host's key in KEYS/known_hosts. One that knows no host key:
    let trusting_nobody = keys.path().join("ssh-knowing-nobody");
    let nobody_known = keys.path().join("empty_known_hosts");
    std::fs::write(&nobody_known, "").expect("empty known_hosts");
    std::fs::write(
        &trusting_nobody,
        std::fs::read_to_string(keys.path().join("ssh"))
            .expect("KEYS/ssh")
            .replace(
                keys.path().join("known_hosts").to_str().expect("utf8"),
                nobody_known.to_str().expect("utf8"),
            ),
    )
    .expect("ssh wrapper");
    std::fs::set_permissions(&trusting_nobody, std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let ssh_uri = |key: &str, ssh: &Path| {
        format!(
            "qemu+ssh://root@{ip}/system?keyfile={}&command={}&no_tty=1",
            keys.path().join(key).display(),
            ssh.display()
        )
    };
    let ssh = keys.path().join("ssh");
    // ssh only: libvirtd listens on no TCP port.
    let plain = virsh_at(&format!("qemu+tcp://{ip}/system"), &["version"]);
    assert!(plain.is_err(), "plain tcp answered: {plain:?}");

    let hosts = vec![
        ("keyed".to_string(), ssh_uri("id_ed25519", &ssh)),
        // A key the host's sshd does not let in.
        ("stranger".to_string(), ssh_uri("stranger", &ssh)),
        // The right key, but the host's own key is not the one known: refused before any login.
        (
            "unverified".to_string(),
            ssh_uri("id_ed25519", &trusting_nobody),
        ),
    ];
    let names = ["keyed", "stranger", "unverified"];
    let mut d = Daemon::prepare(
        1,
        0,
        &format!(
            "{}{}",
            pool_toml("tunneled", &names, "max_vms = 2\nstart = \"boot\""),
            hosts_toml(&hosts, 2)
        ),
    );
    d.spawn();
    push_and_run_two(&d, "keyed", "tunneled");
    let hosts = d.json(&["host", "list"]);
    for (refused, why) in [
        ("stranger", "Permission denied (publickey)"),
        ("unverified", "Host key verification failed"),
    ] {
        let h = hosts
            .as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == refused))
            .cloned()
            .unwrap_or_else(|| panic!("{refused} in {hosts:#}"));
        assert_eq!(h["state"], "down", "{h:#}");
        assert!(
            h["last_error"].as_str().unwrap_or("").contains(why),
            "{refused} is down for another reason than {why:?}: {h:#}"
        );
    }
    d.terminate();
    assert_nothing_left_at(&ssh_uri("id_ed25519", &ssh));
}

const DOZING: &str = r#"---
name: dozing
namespace: scratch
desc: runs while its host is drained
maintainer:
  - minion
input:
  args: [koji_build]
actions:
  - name: work
    shell:
      - sleep 15
      - echo "woke"
"#;

/// `minion-prebooted-…` domains on host k.
fn parked_on(k: usize) -> Vec<String> {
    domains_on(k)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.starts_with("minion-prebooted-"))
        .collect()
}

#[test]
fn min_ready_parks_across_hosts_and_a_drained_host_empties_while_its_job_finishes() {
    let t = "min_ready_parks_across_hosts_and_a_drained_host_empties_while_its_job_finishes";
    if !hosts_env(t, &[]) {
        return;
    }
    let _hosts = fake_hosts_up(&["up", "2"]);
    let hosts: Vec<(String, String)> = (1..=2).map(|k| (format!("mhost{k}"), uri(k))).collect();
    let mut d = Daemon::prepare(
        1,
        0,
        &format!(
            "{}{}",
            pool_toml(
                "parked",
                &["mhost1", "mhost2"],
                "max_vms = 2\nmin_ready = 2\nstart = \"boot\""
            ),
            hosts_toml(&hosts, 1)
        ),
    );
    d.spawn();
    let push = d.cli(&["image", "push", "minimal", "--all"]);
    assert!(push.status.success(), "push: {}", output_text(&push));
    // min_ready over two hosts of one slot each: one parked VM on each.
    until("a parked VM on each host", Duration::from_secs(120), || {
        parked_on(1).len() == 1 && parked_on(2).len() == 1
    });

    let repo = task_repo(DOZING);
    let id = d.submit(repo.path(), &["-p", "parked"]);
    let j = d.wait_state(&id, &["RUNNING"], Duration::from_secs(60));
    let detail = booting_detail(&j);
    let k = (1..=2)
        .find(|&k| {
            parked_on(k)
                .iter()
                .any(|dom| detail.contains(&dom["minion-".len()..]))
        })
        .unwrap_or_else(|| panic!("the job's parked VM ({detail}) on no host"));
    let other = 3 - k;
    let other_parked = parked_on(other);

    // Drained mid-job: the job runs on, nothing new starts there, the other host is untouched.
    let drain = d.cli(&["host", "drain", &format!("mhost{k}")]);
    assert!(drain.status.success(), "drain: {}", output_text(&drain));
    let j = d.wait_state(
        &id,
        &["FINISHED", "FAILED", "CANCELLED", "TIMED_OUT"],
        Duration::from_secs(120),
    );
    assert_eq!(j["state"], "FINISHED", "{j:#}\n{}", d.log());
    until("the drained host empty", Duration::from_secs(30), || {
        domains_on(k).is_ok_and(|d| d.is_empty())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        domains_on(k).expect("domains"),
        Vec::<String>::new(),
        "a VM on drained mhost{k}"
    );
    assert_eq!(
        parked_on(other),
        other_parked,
        "mhost{other}'s parked VM was touched"
    );

    // The other host drained too: its parked VM goes; undrained, both park again.
    let drain = d.cli(&["host", "drain", &format!("mhost{other}")]);
    assert!(drain.status.success(), "drain: {}", output_text(&drain));
    until("no VM on any host", Duration::from_secs(30), || {
        (1..=2).all(|k| domains_on(k).is_ok_and(|d| d.is_empty()))
    });
    for h in [k, other] {
        let undrain = d.cli(&["host", "undrain", &format!("mhost{h}")]);
        assert!(
            undrain.status.success(),
            "undrain: {}",
            output_text(&undrain)
        );
    }
    until(
        "a parked VM on each host again",
        Duration::from_secs(120),
        || parked_on(1).len() == 1 && parked_on(2).len() == 1,
    );
    d.terminate();
    for k in 1..=2 {
        assert_eq!(
            domains_on(k).expect("domains"),
            Vec::<String>::new(),
            "mhost{k}"
        );
        assert_eq!(vm_volumes_on(k), Vec::<String>::new(), "mhost{k}");
    }
}
