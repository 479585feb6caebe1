//! [`FetchRequest`] on the guest channel: the agent encodes what a step asks for, the host decodes
//! it, and [`FetchRequest::check`] bounds every field before the host acts on it.

use minion_formula::{FetchRequest, RpmFilter};
use minion_proto::guest::{self, fetch_request::What};

fn filter_to_wire(f: &RpmFilter) -> guest::RpmFilter {
    guest::RpmFilter {
        arches: f.arches.clone(),
        exclude: f.exclude.clone(),
        src: f.src,
        debuginfo: f.debuginfo,
        build_log: f.build_log,
    }
}

fn filter_from_wire(f: Option<guest::RpmFilter>) -> RpmFilter {
    let f = f.unwrap_or_default();
    RpmFilter {
        arches: f.arches,
        exclude: f.exclude,
        src: f.src,
        debuginfo: f.debuginfo,
        build_log: f.build_log,
    }
}

/// The frame for request `id`.
pub fn request_to_wire(id: u32, r: &FetchRequest) -> guest::FetchRequest {
    let what = match r {
        FetchRequest::KojiBuild { nvr, rpms } => What::KojiBuild(guest::KojiBuildFetch {
            nvr: nvr.clone(),
            rpms: Some(filter_to_wire(rpms)),
        }),
        FetchRequest::KojiLatestStable { nvr, rpms } => {
            What::KojiLatestStable(guest::KojiBuildFetch {
                nvr: nvr.clone(),
                rpms: Some(filter_to_wire(rpms)),
            })
        }
        FetchRequest::KojiTag { tag, rpms } => What::KojiTag(guest::KojiTagFetch {
            tag: tag.clone(),
            rpms: Some(filter_to_wire(rpms)),
        }),
        FetchRequest::BodhiUpdate { id, rpms } => What::BodhiUpdate(guest::BodhiUpdateFetch {
            id: id.clone(),
            rpms: Some(filter_to_wire(rpms)),
        }),
        FetchRequest::DistGit {
            namespace,
            package,
            gitref,
            paths,
            ignore_missing,
        } => What::DistGit(guest::DistGitFetch {
            namespace: namespace.clone(),
            package: package.clone(),
            gitref: gitref.clone(),
            paths: paths.clone(),
            ignore_missing: *ignore_missing,
        }),
        FetchRequest::PackageIndex => What::PackageIndex(guest::PackageIndexFetch {}),
        FetchRequest::Packages { files } => What::Packages(guest::PackagesFetch {
            files: files.clone(),
        }),
    };
    guest::FetchRequest {
        id,
        what: Some(what),
    }
}

/// A guest's request, checked; the error is what the guest is told.
pub fn request_from_wire(r: guest::FetchRequest) -> Result<FetchRequest, String> {
    let req = match r.what.ok_or("a fetch request that names nothing")? {
        What::KojiBuild(k) => FetchRequest::KojiBuild {
            nvr: k.nvr,
            rpms: filter_from_wire(k.rpms),
        },
        What::KojiLatestStable(k) => FetchRequest::KojiLatestStable {
            nvr: k.nvr,
            rpms: filter_from_wire(k.rpms),
        },
        What::KojiTag(k) => FetchRequest::KojiTag {
            tag: k.tag,
            rpms: filter_from_wire(k.rpms),
        },
        What::BodhiUpdate(b) => FetchRequest::BodhiUpdate {
            id: b.id,
            rpms: filter_from_wire(b.rpms),
        },
        What::DistGit(d) => FetchRequest::DistGit {
            namespace: d.namespace,
            package: d.package,
            gitref: d.gitref,
            paths: d.paths,
            ignore_missing: d.ignore_missing,
        },
        What::PackageIndex(_) => FetchRequest::PackageIndex,
        What::Packages(p) => FetchRequest::Packages { files: p.files },
    };
    req.check()?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let reqs = [
            FetchRequest::KojiBuild {
                nvr: "foo-1-1.fc40".into(),
                rpms: RpmFilter {
                    arches: vec!["x86_64".into()],
                    exclude: vec!["i686".into()],
                    src: true,
                    debuginfo: false,
                    build_log: true,
                },
            },
            FetchRequest::DistGit {
                namespace: "rpms".into(),
                package: "foo".into(),
                gitref: "f40".into(),
                paths: vec!["foo.spec".into()],
                ignore_missing: true,
            },
            FetchRequest::PackageIndex,
            FetchRequest::Packages {
                files: vec!["rpmlint_2.4.0-1_all.deb".into()],
            },
        ];
        for r in reqs {
            assert_eq!(request_from_wire(request_to_wire(3, &r)), Ok(r));
        }
        let bad = guest::FetchRequest {
            id: 1,
            what: Some(What::KojiBuild(guest::KojiBuildFetch {
                nvr: "http://evil.example/x-1-1".into(),
                rpms: None,
            })),
        };
        assert!(request_from_wire(bad).is_err());
        let escape = guest::FetchRequest {
            id: 2,
            what: Some(What::Packages(guest::PackagesFetch {
                files: vec!["../../etc/shadow".into()],
            })),
        };
        assert!(request_from_wire(escape).is_err());
        assert!(request_from_wire(guest::FetchRequest { id: 1, what: None }).is_err());
    }
}
