//! Koji through its hub's XML-RPC API (`getBuild`, `listRPMs`, `listTagged`) and its package URL
//! (`PACKAGES/NAME/VERSION/RELEASE/ARCH/FILE`). Every name Koji answers is checked before it
//! becomes part of a URL or a file name.

use minion_formula::{check_name, split_nvr, FetchedKind, RpmFilter};
use serde::Deserialize;

use crate::http::{segment, Http};
use crate::xmlrpc::{self, Value};
use crate::{Budget, FetchError, Remote};

const SERVICE: &str = "Koji";
/// Koji's build state for a finished build.
const BUILD_COMPLETE: i64 = 1;
/// Most builds taken from one tag.
const MAX_TAG_BUILDS: usize = 5000;

/// Where Koji is: its hub (`https://koji.fedoraproject.org/kojihub`) and its package files
/// (`https://kojipkgs.fedoraproject.org/packages`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KojiEndpoint {
    pub hub: String,
    pub packages: String,
}

/// A build as Koji describes it.
#[derive(Debug, Clone)]
struct Build {
    id: i64,
    nvr: String,
    name: String,
    version: String,
    release: String,
}

pub struct Koji<'a> {
    pub endpoint: &'a KojiEndpoint,
    pub http: &'a Http,
}

fn text(v: &Value, key: &str) -> Result<String, FetchError> {
    let s = v
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| FetchError::Protocol {
            service: SERVICE,
            message: format!("an answer without `{key}`"),
        })?;
    check_name(key, s).map_err(|m| FetchError::Protocol {
        service: SERVICE,
        message: m,
    })?;
    Ok(s.to_string())
}

impl Koji<'_> {
    fn call(&self, method: &str, params: &[Value], budget: &Budget) -> Result<Value, FetchError> {
        let body = xmlrpc::encode_call(method, params);
        let url = &self.endpoint.hub;
        let (status, text) = self
            .http
            .post_text(SERVICE, url, "text/xml", &body, budget)?;
        if status != 200 {
            return Err(FetchError::Unreachable {
                service: SERVICE,
                url: url.clone(),
                message: format!("HTTP {status} to {method}"),
            });
        }
        xmlrpc::decode_response(&text).map_err(|e| match e {
            xmlrpc::ResponseError::Fault { code, message } => FetchError::Refused {
                service: SERVICE,
                message: format!("{method}: {message} (fault {code})"),
            },
            xmlrpc::ResponseError::Malformed(m) => FetchError::Protocol {
                service: SERVICE,
                message: format!("{method}: {m}"),
            },
        })
    }

    fn build_from(v: &Value) -> Result<Build, FetchError> {
        let id = v
            .get("build_id")
            .or_else(|| v.get("id"))
            .and_then(Value::as_i64)
            .ok_or_else(|| FetchError::Protocol {
                service: SERVICE,
                message: "a build without an id".into(),
            })?;
        Ok(Build {
            id,
            nvr: text(v, "nvr")?,
            name: text(v, "name").or_else(|_| text(v, "package_name"))?,
            version: text(v, "version")?,
            release: text(v, "release")?,
        })
    }

    fn get_build(&self, nvr: &str, budget: &Budget) -> Result<Build, FetchError> {
        let v = self.call("getBuild", &[nvr.into()], budget)?;
        if v == Value::Nil {
            return Err(FetchError::NotFound {
                what: format!("Koji has no build {nvr}"),
            });
        }
        let state = v
            .get("state")
            .and_then(Value::as_i64)
            .unwrap_or(BUILD_COMPLETE);
        if state != BUILD_COMPLETE {
            return Err(FetchError::NotFound {
                what: format!("Koji build {nvr} is not complete (state {state})"),
            });
        }
        Self::build_from(&v)
    }

    /// The wanted files of one build.
    fn build_files(
        &self,
        b: &Build,
        filter: &RpmFilter,
        budget: &Budget,
    ) -> Result<Vec<Remote>, FetchError> {
        let rpms = self.call(
            "listRPMs",
            &[Value::kwargs([("buildID", Value::Int(b.id))])],
            budget,
        )?;
        let rpms = rpms.as_array().ok_or_else(|| FetchError::Protocol {
            service: SERVICE,
            message: "listRPMs did not answer a list".into(),
        })?;
        let mut arches = Vec::new();
        let mut out = Vec::new();
        let base = self.endpoint.packages.trim_end_matches('/');
        let dir = format!(
            "{base}/{}/{}/{}",
            segment(&b.name),
            segment(&b.version),
            segment(&b.release)
        );
        for r in rpms {
            let (name, version, release, arch) = (
                text(r, "name")?,
                text(r, "version")?,
                text(r, "release")?,
                text(r, "arch")?,
            );
            if !arches.contains(&arch) {
                arches.push(arch.clone());
            }
            if !filter.wants(&name, &arch) {
                continue;
            }
            let file = format!("{name}-{version}-{release}.{arch}.rpm");
            out.push(Remote {
                url: format!("{dir}/{}/{}", segment(&arch), segment(&file)),
                name: file,
                kind: FetchedKind::Rpm,
                size: r
                    .get("size")
                    .and_then(Value::as_i64)
                    .and_then(|s| u64::try_from(s).ok()),
                immutable: true,
            });
        }
        if out.is_empty() {
            arches.sort();
            return Err(FetchError::NotFound {
                what: format!(
                    "Koji build {} has no RPMs for arch {} (it has: {})",
                    b.nvr,
                    if filter.arches.is_empty() {
                        "all".to_string()
                    } else {
                        filter.arches.join(", ")
                    },
                    if arches.is_empty() {
                        "none".to_string()
                    } else {
                        arches.join(", ")
                    }
                ),
            });
        }
        if filter.build_log {
            for arch in arches.iter().filter(|a| filter.wants(&b.name, a)) {
                out.push(Remote {
                    url: format!("{dir}/data/logs/{}/build.log", segment(arch)),
                    name: format!("build.{arch}.log"),
                    kind: FetchedKind::Log,
                    size: None,
                    immutable: true,
                });
            }
        }
        Ok(out)
    }

    pub fn build(
        &self,
        nvr: &str,
        filter: &RpmFilter,
        budget: &Budget,
    ) -> Result<Vec<Remote>, FetchError> {
        let b = self.get_build(nvr, budget)?;
        self.build_files(&b, filter, budget)
    }

    fn tagged(
        &self,
        tag: &str,
        package: Option<&str>,
        budget: &Budget,
    ) -> Result<Vec<Build>, FetchError> {
        let mut kw = vec![("latest", Value::Bool(true))];
        if let Some(p) = package {
            kw.push(("package", p.into()));
        }
        let v = self
            .call("listTagged", &[tag.into(), Value::kwargs(kw)], budget)
            .map_err(|e| match e {
                FetchError::Refused { message, .. } if message.contains("No such") => {
                    FetchError::NotFound {
                        what: format!("Koji has no tag {tag}"),
                    }
                }
                other => other,
            })?;
        let list = v.as_array().ok_or_else(|| FetchError::Protocol {
            service: SERVICE,
            message: "listTagged did not answer a list".into(),
        })?;
        if list.len() > MAX_TAG_BUILDS {
            return Err(FetchError::Protocol {
                service: SERVICE,
                message: format!(
                    "tag {tag} has {} builds, more than {MAX_TAG_BUILDS}",
                    list.len()
                ),
            });
        }
        list.iter().map(Self::build_from).collect()
    }

    pub fn tag(
        &self,
        tag: &str,
        filter: &RpmFilter,
        budget: &Budget,
    ) -> Result<Vec<Remote>, FetchError> {
        let mut out = Vec::new();
        for b in self.tagged(tag, None, budget)? {
            match self.build_files(&b, filter, budget) {
                Ok(files) => out.extend(files),
                // A build with nothing for these arches is fine inside a tag.
                Err(FetchError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The newest build of `nvr`'s package in its release's stable tags, `fNN-updates` then
    /// `fNN` (from a `.fcNN` release); nothing when there is none.
    pub fn latest_stable(
        &self,
        nvr: &str,
        filter: &RpmFilter,
        budget: &Budget,
    ) -> Result<Vec<Remote>, FetchError> {
        let Some((name, _, release)) = split_nvr(nvr) else {
            return Err(FetchError::NotFound {
                what: format!("`{nvr}` is not an NVR"),
            });
        };
        let Some(n) = release
            .rsplit('.')
            .find_map(|part| part.strip_prefix("fc"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return Err(FetchError::NotFound {
                what: format!("{nvr}: its release has no .fcNN to find the stable tags by"),
            });
        };
        for tag in [format!("f{n}-updates"), format!("f{n}")] {
            let builds = match self.tagged(&tag, Some(name), budget) {
                Ok(b) => b,
                Err(FetchError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if let Some(b) = builds.first() {
                return self.build_files(b, filter, budget);
            }
        }
        Ok(Vec::new())
    }
}
