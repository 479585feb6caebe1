//! **Stand-ins for Koji, Bodhi and dist-git** (the real ones are Fedora's services; none can run
//! here): one local HTTP server that answers what Minion asks of them, as they answer it.
//!
//! - `POST /kojihub` — Koji's XML-RPC hub: `getBuild(nvr)` (a build struct, or nil when Koji has
//!   no such build), `listRPMs(buildID=…)` (the build's RPM structs: name, version, release, arch,
//!   size, payloadhash), `listTagged(tag, latest=…, package=…)` (builds, newest first; a fault
//!   `GenericError: No such tagInfo` for an unknown tag). Other methods: a fault, as Koji answers.
//! - `GET /packages/NAME/VERSION/RELEASE/ARCH/FILE` — the RPM files, real ones built with
//!   `rpmbuild` by the test ([`crate::rpm`]); 404 otherwise.
//! - `GET /bodhi/updates/ID` — Bodhi's REST answer `{"update": {"alias", "builds": [{"nvr"}]}}`,
//!   or 404 `{"status": "error", …}`.
//! - `GET /distgit/NAMESPACE/PACKAGE/raw/REF/f/PATH` — a file of a dist-git repo (Pagure's URL
//!   scheme), or 404.
//!
//! Every request is recorded ([`FedoraStandIn::requests`]); [`FedoraStandIn::set_delay`] makes
//! every answer wait (a hub that times out).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

#[derive(Debug, Clone)]
struct Rpm {
    name: String,
    version: String,
    release: String,
    arch: String,
    file: PathBuf,
    size: u64,
}

#[derive(Debug, Clone)]
struct Build {
    id: i64,
    name: String,
    version: String,
    release: String,
    rpms: Vec<Rpm>,
}

impl Build {
    fn nvr(&self) -> String {
        format!("{}-{}-{}", self.name, self.version, self.release)
    }
}

#[derive(Default)]
struct State {
    builds: Vec<Build>,
    /// tag → build ids, oldest first.
    tags: BTreeMap<String, Vec<i64>>,
    updates: BTreeMap<String, Vec<String>>,
    distgit: BTreeMap<String, Vec<u8>>,
    requests: Vec<(String, String, u16)>,
    delay: Duration,
}

/// A running stand-in; it lives as long as the process.
#[derive(Clone)]
pub struct FedoraStandIn {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FedoraStandIn {
    pub fn start() -> FedoraStandIn {
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let url = crate::http::serve("Fedora stand-in", move |req, stream| {
            serve(&st, req, stream)
        });
        FedoraStandIn { url, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Koji's hub URL (`[koji] hub`).
    pub fn koji_hub(&self) -> String {
        format!("{}/kojihub", self.url)
    }

    /// Koji's package URL (`[koji] packages`).
    pub fn koji_packages(&self) -> String {
        format!("{}/packages", self.url)
    }

    pub fn bodhi_url(&self) -> String {
        format!("{}/bodhi", self.url)
    }

    pub fn distgit_url(&self) -> String {
        format!("{}/distgit", self.url)
    }

    /// Registers a finished build from its RPM files (each named `N-V-R.ARCH.rpm`); the build's
    /// NVR is `nvr`. Returns its id.
    pub fn add_build(&self, nvr: &str, rpms: &[&Path]) -> i64 {
        let (rest, release) = nvr.rsplit_once('-').expect("an NVR");
        let (name, version) = rest.rsplit_once('-').expect("an NVR");
        let rpms = rpms
            .iter()
            .map(|p| {
                let file = p.file_name().and_then(|f| f.to_str()).expect("a file name");
                let stem = file.strip_suffix(".rpm").expect("an .rpm");
                let (nvr, arch) = stem.rsplit_once('.').expect("N-V-R.ARCH.rpm");
                let (rest, rel) = nvr.rsplit_once('-').expect("N-V-R");
                let (n, v) = rest.rsplit_once('-').expect("N-V-R");
                Rpm {
                    name: n.into(),
                    version: v.into(),
                    release: rel.into(),
                    arch: arch.into(),
                    file: p.to_path_buf(),
                    size: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                }
            })
            .collect();
        let mut st = self.lock();
        let id = st.builds.len() as i64 + 1000;
        st.builds.push(Build {
            id,
            name: name.into(),
            version: version.into(),
            release: release.into(),
            rpms,
        });
        id
    }

    /// Tags a build (the newest tagged is the latest).
    pub fn tag(&self, tag: &str, nvr: &str) {
        let mut st = self.lock();
        let id = st
            .builds
            .iter()
            .find(|b| b.nvr() == nvr)
            .map(|b| b.id)
            .expect("a known build");
        st.tags.entry(tag.into()).or_default().push(id);
    }

    pub fn add_update(&self, id: &str, nvrs: &[&str]) {
        self.lock()
            .updates
            .insert(id.into(), nvrs.iter().map(|s| s.to_string()).collect());
    }

    pub fn add_distgit_file(
        &self,
        namespace: &str,
        package: &str,
        gitref: &str,
        path: &str,
        content: &[u8],
    ) {
        self.lock().distgit.insert(
            format!("/{namespace}/{package}/raw/{gitref}/f/{path}"),
            content.to_vec(),
        );
    }

    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Every request so far: (method, path, status).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.lock().requests.clone()
    }

    /// XML-RPC methods called so far, in order.
    pub fn koji_calls(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .filter(|(m, _, _)| m.starts_with("XMLRPC "))
            .map(|(m, _, _)| m["XMLRPC ".len()..].to_string())
            .collect()
    }
}

// ---- XML-RPC, written out independently of Minion's client ----

fn x_str(s: &str) -> String {
    let s = s
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("<value><string>{s}</string></value>")
}

fn x_int(i: i64) -> String {
    format!("<value><int>{i}</int></value>")
}

fn x_struct(members: &[(&str, String)]) -> String {
    let mut out = String::from("<value><struct>");
    for (k, v) in members {
        out.push_str(&format!("<member><name>{k}</name>{v}</member>"));
    }
    out.push_str("</struct></value>");
    out
}

fn x_array(items: &[String]) -> String {
    format!(
        "<value><array><data>{}</data></array></value>",
        items.concat()
    )
}

fn x_response(value: &str) -> String {
    format!("<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n{value}\n</param>\n</params>\n</methodResponse>\n")
}

fn x_fault(code: i64, msg: &str) -> String {
    format!(
        "<?xml version='1.0'?>\n<methodResponse>\n<fault>\n{}\n</fault>\n</methodResponse>\n",
        x_struct(&[("faultCode", x_int(code)), ("faultString", x_str(msg))])
    )
}

fn x_build(b: &Build) -> String {
    x_struct(&[
        ("build_id", x_int(b.id)),
        ("id", x_int(b.id)),
        ("nvr", x_str(&b.nvr())),
        ("name", x_str(&b.name)),
        ("package_name", x_str(&b.name)),
        ("version", x_str(&b.version)),
        ("release", x_str(&b.release)),
        ("state", x_int(1)),
    ])
}

/// A call's method name and its arguments: positional as text, keyword arguments (Koji's
/// `__starstar` struct) as name → text.
fn parse_call(body: &str) -> Option<(String, Vec<String>, BTreeMap<String, String>)> {
    let doc = roxmltree::Document::parse(body).ok()?;
    let method = doc
        .descendants()
        .find(|n| n.has_tag_name("methodName"))?
        .text()?
        .to_string();
    let mut args = Vec::new();
    let mut kwargs = BTreeMap::new();
    for p in doc.descendants().filter(|n| n.has_tag_name("param")) {
        let v = p.children().find(|c| c.has_tag_name("value"))?;
        match v.children().find(|c| c.is_element()) {
            Some(s) if s.has_tag_name("struct") => {
                for m in s.children().filter(|c| c.has_tag_name("member")) {
                    let name = m.children().find(|c| c.has_tag_name("name"))?.text()?;
                    let val = m.children().find(|c| c.has_tag_name("value"))?;
                    let text: String = val
                        .descendants()
                        .filter(|d| d.is_text())
                        .filter_map(|d| d.text())
                        .collect();
                    kwargs.insert(name.to_string(), text);
                }
            }
            Some(e) => args.push(e.text().unwrap_or("").to_string()),
            None => args.push(v.text().unwrap_or("").to_string()),
        }
    }
    Some((method, args, kwargs))
}

fn koji_call(st: &State, body: &str) -> (String, String) {
    let Some((method, args, kwargs)) = parse_call(body) else {
        return ("?".into(), x_fault(1, "ParseError: not an XML-RPC call"));
    };
    let reply = match method.as_str() {
        "getBuild" => match st.builds.iter().find(|b| Some(&b.nvr()) == args.first()) {
            Some(b) => x_response(&x_build(b)),
            None => x_response("<value><nil/></value>"),
        },
        "listRPMs" => {
            let id: i64 = kwargs
                .get("buildID")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(-1);
            let rpms: Vec<String> = st
                .builds
                .iter()
                .filter(|b| b.id == id)
                .flat_map(|b| b.rpms.iter().map(move |r| (b, r)))
                .map(|(b, r)| {
                    x_struct(&[
                        ("build_id", x_int(b.id)),
                        ("name", x_str(&r.name)),
                        ("version", x_str(&r.version)),
                        ("release", x_str(&r.release)),
                        ("arch", x_str(&r.arch)),
                        ("size", x_int(r.size as i64)),
                        ("payloadhash", x_str("0")),
                    ])
                })
                .collect();
            x_response(&x_array(&rpms))
        }
        "listTagged" => {
            let tag = args.first().cloned().unwrap_or_default();
            match st.tags.get(&tag) {
                None => x_fault(1000, &format!("GenericError: No such tagInfo: '{tag}'")),
                Some(ids) => {
                    let package = kwargs.get("package");
                    let latest = kwargs.get("latest").is_some_and(|v| v.trim() == "1");
                    let mut builds: Vec<&Build> = ids
                        .iter()
                        .rev()
                        .filter_map(|id| st.builds.iter().find(|b| b.id == *id))
                        .filter(|b| package.is_none_or(|p| *p == b.name))
                        .collect();
                    if latest {
                        let mut seen = std::collections::BTreeSet::new();
                        builds.retain(|b| seen.insert(b.name.clone()));
                    }
                    x_response(&x_array(
                        &builds.iter().map(|b| x_build(b)).collect::<Vec<_>>(),
                    ))
                }
            }
        }
        other => x_fault(1000, &format!("koji.GenericError: Invalid method: {other}")),
    };
    (method, reply)
}

enum Body {
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn serve(st: &Mutex<State>, req: crate::http::Request, stream: TcpStream) -> std::io::Result<()> {
    let (method, body) = (req.method.as_str(), &req.body);
    let path = req.path_and_query().0.to_string();
    let delay = st.lock().unwrap_or_else(|p| p.into_inner()).delay;
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let (status, ctype, reply, logged) = {
        let state = st.lock().unwrap_or_else(|p| p.into_inner());
        route(&state, method, &path, body)
    };
    st.lock()
        .unwrap_or_else(|p| p.into_inner())
        .requests
        .push((logged, path, status));
    let mut out = stream;
    match reply {
        Body::Bytes(b) => {
            write!(out, "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len())?;
            out.write_all(&b)?;
        }
        Body::File(p) => {
            let mut f = std::fs::File::open(&p)?;
            let size = f.metadata()?.len();
            write!(out, "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")?;
            std::io::copy(&mut f, &mut out)?;
        }
    }
    out.flush()
}

fn route(st: &State, method: &str, path: &str, body: &[u8]) -> (u16, &'static str, Body, String) {
    let not_found = |what: &str| {
        (
            404,
            "application/json",
            Body::Bytes(
                json!({"status": "error", "errors": [{"description": what}]})
                    .to_string()
                    .into_bytes(),
            ),
            method.to_string(),
        )
    };
    match (method, path) {
        ("POST", "/kojihub") => {
            let (m, reply) = koji_call(st, &String::from_utf8_lossy(body));
            (
                200,
                "text/xml",
                Body::Bytes(reply.into_bytes()),
                format!("XMLRPC {m}"),
            )
        }
        ("GET", p) if p.starts_with("/packages/") => {
            let rest = &p["/packages/".len()..];
            let parts: Vec<&str> = rest.split('/').collect();
            let found = st.builds.iter().find_map(|b| {
                let [n, v, r, arch, file] = parts.as_slice() else {
                    return None;
                };
                if (*n, *v, *r) != (b.name.as_str(), b.version.as_str(), b.release.as_str()) {
                    return None;
                }
                b.rpms.iter().find(|rpm| {
                    rpm.arch == *arch
                        && format!(
                            "{}-{}-{}.{}.rpm",
                            rpm.name, rpm.version, rpm.release, rpm.arch
                        ) == *file
                })
            });
            match found {
                Some(rpm) => (
                    200,
                    "application/x-rpm",
                    Body::File(rpm.file.clone()),
                    method.into(),
                ),
                None => not_found("no such file"),
            }
        }
        ("GET", p) if p.starts_with("/bodhi/updates/") => {
            let id = &p["/bodhi/updates/".len()..];
            match st.updates.get(id) {
                Some(nvrs) => {
                    let builds: Vec<_> = nvrs.iter().map(|n| json!({"nvr": n})).collect();
                    let v = json!({"update": {"alias": id, "builds": builds, "status": "testing"}});
                    (
                        200,
                        "application/json",
                        Body::Bytes(v.to_string().into_bytes()),
                        method.into(),
                    )
                }
                None => not_found(&format!("Invalid update id {id}")),
            }
        }
        ("GET", p) if p.starts_with("/distgit/") => match st.distgit.get(&p["/distgit".len()..]) {
            Some(c) => (200, "text/plain", Body::Bytes(c.clone()), method.into()),
            None => not_found("file not found"),
        },
        _ => not_found("no such endpoint"),
    }
}

/// The builds the python-versions example checks, built with rpmbuild under `work` and
/// registered in `koji`: `foo-1.0-1.fc40` (`python3-foo`, noarch, Python 3 only: passes) and
/// `mixed-1.0-1.fc40` (`mixed`, x86_64, Python 2 and 3: fails). `pad` bytes of incompressible
/// data go into `python3-foo` (for transfer benchmarks; 0 for tests).
pub fn python_versions_builds(koji: &FedoraStandIn, work: &Path, pad: usize) -> Result<(), String> {
    use crate::rpm::{build, Package};
    let mut files = vec![(
        "/usr/lib/python3/site-packages/foo.py",
        b"print('foo')\n".to_vec(),
    )];
    if pad > 0 {
        files.push(("/usr/share/foo/blob", pseudo_random(pad)));
    }
    let py3 = build(
        work,
        &Package {
            name: "python3-foo",
            version: "1.0",
            release: "1.fc40",
            arch: "noarch",
            files,
            requires: vec!["python(abi) = 3.11"],
        },
    )?;
    koji.add_build("foo-1.0-1.fc40", &[&py3]);
    let mixed = build(
        work,
        &Package {
            name: "mixed",
            version: "1.0",
            release: "1.fc40",
            arch: "x86_64",
            files: vec![("/usr/bin/mixed", b"#!/bin/sh\n".to_vec())],
            requires: vec!["python(abi) = 2.7", "/usr/bin/python3"],
        },
    )?;
    koji.add_build("mixed-1.0-1.fc40", &[&mixed]);
    Ok(())
}

/// Bytes that do not compress (xorshift), so a payload's size is what goes over the wire.
fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}
