//! Who may do what: the unix socket (its group and mode; the kernel's peer uid) and TLS with
//! bearer tokens on TCP, one token per role against each verb.

mod common;
use common::*;
use minion_testenv::Need;

const NOBODY: u32 = 65534;

/// `minion submit REPO -i foo-1.0-1.fc40 -t koji_build --json`'s arguments.
fn submit_json(repo: &str) -> [&str; 7] {
    [
        "submit",
        repo,
        "-i",
        "foo-1.0-1.fc40",
        "-t",
        "koji_build",
        "--json",
    ]
}

fn id_of(o: &Output) -> String {
    assert!(o.status.success(), "{}", output_text(o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    v["id"].as_str().expect("id").to_string()
}

#[test]
fn the_socket_refuses_non_members_and_a_member_cancels_only_its_own_jobs() {
    let test = "the_socket_refuses_non_members_and_a_member_cancels_only_its_own_jobs";
    if !vm_env_with(test, &[Need::Program("setpriv"), Need::Program("getent")]) {
        return;
    }
    let gid = minion_gid();
    let d = Daemon::start(1, 0);
    // The test's state dir is 0700; the socket's own group and mode are what must decide.
    std::fs::set_permissions(
        d.state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let repo = task_repo(SLEEPING);
    std::fs::set_permissions(
        repo.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let repo_s = repo.path().to_str().expect("utf8");

    // Not in the group: the socket's mode refuses the connection itself.
    let out = d.cli_as(NOBODY, &[], &["job", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("Permission denied"),
        "{}",
        output_text(&out)
    );

    let root_job = d.submit(repo.path(), &[]);
    let submit = submit_json(repo_s);
    let member_job = id_of(&d.cli_as(NOBODY, &[gid], &submit));
    assert_eq!(d.job(&root_job)["submitter"], "uid:0");
    assert_eq!(d.job(&member_job)["submitter"], format!("uid:{NOBODY}"));

    // A member reads everything, cancels its own job, not root's.
    let out = d.cli_as(NOBODY, &[gid], &["job", "show", &root_job]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = d.cli_as(NOBODY, &[gid], &["job", "cancel", &root_job]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let want = format!(
        "refused: uid:{NOBODY} (role submit) may not cancel job {root_job}, submitted by uid:0: that needs role admin"
    );
    assert!(output_text(&out).contains(&want), "{}", output_text(&out));
    assert!(d.log().contains("refused"), "the refusal is logged");
    let out = d.cli_as(NOBODY, &[gid], &["job", "cancel", &member_job]);
    assert!(out.status.success(), "{}", output_text(&out));
    d.wait_state(&member_job, &["CANCELLED"], Duration::from_secs(60));
    assert_ne!(d.job(&root_job)["state"], "CANCELLED");

    // Root is admin: it may cancel anyone's, and its own.
    let out = d.cli(&["job", "cancel", &root_job]);
    assert!(out.status.success(), "{}", output_text(&out));
    d.wait_state(&root_job, &["CANCELLED"], Duration::from_secs(120));
    d.assert_no_vm(&root_job);
}

/// What each verb needs; the table the test runs every role's token against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Read,
    Submit,
    Admin,
}

#[test]
fn over_tls_each_tokens_role_allows_exactly_its_verbs() {
    let test = "over_tls_each_tokens_role_allows_exactly_its_verbs";
    let py = grpc_python();
    let python = Need::File {
        path: &py,
        make: "scripts/setup-host.sh",
    };
    if !vm_env_with(test, &[Need::Program("openssl"), python]) {
        return;
    }
    let t = TlsDaemon::start(1);
    let repo = task_repo(SLEEPING);
    let repo_s = repo.path().to_str().expect("utf8");
    // Someone else's job (root's, on the socket), running for the whole table.
    let others = t.d.submit(repo.path(), &[]);
    t.d.wait_state(&others, &["RUNNING"], Duration::from_secs(120));

    let ca = t.pki.ca.clone();
    for (role, name) in [
        (Role::Read, "read"),
        (Role::Submit, "submit"),
        (Role::Admin, "admin"),
    ] {
        let token = t.tokens[name].as_str();
        let run = |args: &[&str]| t.cli(Some(token), &ca, args);
        // (verb, its arguments, the role it needs)
        let reads: [(&str, Vec<&str>); 5] = [
            ("pool list", vec!["pool", "list"]),
            ("image list", vec!["image", "list"]),
            ("job list", vec!["job", "list"]),
            ("job show", vec!["job", "show", &others]),
            ("job artifacts", vec!["job", "artifacts", &others]),
        ];
        for (verb, args) in &reads {
            let out = run(args);
            assert!(out.status.success(), "{name} {verb}: {}", output_text(&out));
        }
        let submit = run(&submit_json(repo_s));
        if role >= Role::Submit {
            let own = id_of(&submit);
            assert_eq!(t.d.job(&own)["submitter"], format!("token:{name}-bot"));
            let out = run(&["job", "cancel", &own]);
            assert!(
                out.status.success(),
                "{name} cancels its own: {}",
                output_text(&out)
            );
        } else {
            assert_eq!(submit.status.code(), Some(2), "{}", output_text(&submit));
            assert!(
                output_text(&submit).contains(
                    "token:read-bot (role read) may not submit jobs: that needs role submit"
                ),
                "{}",
                output_text(&submit)
            );
        }
        // Pool administration: admin only.
        let drain = run(&["pool", "drain", "minimal"]);
        if role >= Role::Admin {
            assert!(drain.status.success(), "{}", output_text(&drain));
            let undrain = run(&["pool", "undrain", "minimal"]);
            assert!(undrain.status.success(), "{}", output_text(&undrain));
        } else {
            assert_eq!(
                drain.status.code(),
                Some(2),
                "{name}: {}",
                output_text(&drain)
            );
            assert!(
                output_text(&drain).contains(&format!(
                    "token:{name}-bot (role {name}) may not drain pools: that needs role admin"
                )),
                "{}",
                output_text(&drain)
            );
        }
        let cancel = run(&["job", "cancel", &others]);
        if role >= Role::Admin {
            assert!(cancel.status.success(), "{}", output_text(&cancel));
        } else {
            assert_eq!(
                cancel.status.code(),
                Some(2),
                "{name}: {}",
                output_text(&cancel)
            );
            assert!(
                output_text(&cancel).contains("needs role"),
                "{}",
                output_text(&cancel)
            );
        }
    }
    t.d.wait_state(&others, &["CANCELLED"], Duration::from_secs(120));

    // Refused before any verb: a wrong token, no token, a server the client does not trust.
    let out = t.cli(Some("minion_0000"), &ca, &["job", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("not authenticated: the token is not known to this miniond"),
        "{}",
        output_text(&out)
    );
    let out = t.cli(None, &ca, &["job", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("needs a token"),
        "{}",
        output_text(&out)
    );
    let (ok, lines) = grpc_python_client(
        &format!("localhost:{}", t.port),
        repo.path(),
        &["--ca", t.pki.ca.to_str().expect("utf8")],
    );
    assert!(!ok);
    let last = lines.last().expect("a line");
    assert_eq!(last["code"], "UNAUTHENTICATED", "{lines:?}");
    assert!(
        last["details"].as_str().unwrap_or("").contains("no token"),
        "{lines:?}"
    );
    let out = t.cli(Some(&t.tokens["admin"]), &t.other_ca, &["job", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("certificate"),
        "{}",
        output_text(&out)
    );
    assert!(t.d.log().contains("refused a call"), "refusals are logged");
}

/// An HTTPS client that trusts `ca` and follows no redirects.
fn https(ca: &Path) -> ureq::Agent {
    let pem = std::fs::read(ca).expect("CA file");
    let cert = ureq::tls::Certificate::from_pem(&pem).expect("CA PEM");
    ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
                .build(),
        )
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

#[test]
fn the_dashboard_over_tls_needs_a_token_and_signs_in_with_a_cookie() {
    let test = "the_dashboard_over_tls_needs_a_token_and_signs_in_with_a_cookie";
    if !daemon_env(test, &[Need::Program("openssl")]) {
        return;
    }
    let http_port = free_port();
    let t = TlsDaemon::start_with(1, &format!("listen_http = \"127.0.0.1:{http_port}\""));
    let site = format!("https://localhost:{http_port}");
    let agent = https(&t.pki.ca);
    let status = |r: &ureq::http::Response<ureq::Body>| r.status().as_u16();
    let location = |r: &ureq::http::Response<ureq::Body>| {
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };

    // Static files need nothing; everything else a token.
    assert_eq!(
        status(
            &agent
                .get(format!("{site}/static/dashboard.css"))
                .call()
                .expect("css")
        ),
        200
    );
    let r = agent
        .get(format!("{site}/metrics"))
        .call()
        .expect("metrics");
    assert_eq!(status(&r), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = agent
        .get(format!("{site}/pools?x=1"))
        .header("Accept", "text/html")
        .call()
        .expect("pools");
    assert_eq!(status(&r), 303, "a browser is sent to sign in");
    assert_eq!(location(&r), "/login?next=%2Fpools%3Fx%3D1");
    // Bearer tokens of every role read.
    for role in ["read", "submit", "admin"] {
        let r = agent
            .get(format!("{site}/metrics"))
            .header("Authorization", &format!("Bearer {}", t.tokens[role]))
            .call()
            .expect("metrics");
        assert_eq!(status(&r), 200, "{role}");
    }
    let r = agent
        .get(format!("{site}/"))
        .header("Authorization", "Bearer minion_wrong")
        .call()
        .expect("list");
    assert_eq!(status(&r), 401);

    // Signing in: a wrong token is refused; a right one sets a Secure, HttpOnly cookie and
    // goes on to `next`, never to another site.
    let form = |token: &str, next: &str| {
        let mut s = String::from("token=");
        s.push_str(token);
        s.push_str("&next=");
        s.push_str(next);
        s
    };
    let post = |body: String| {
        agent
            .post(format!("{site}/login"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body)
            .expect("login")
    };
    let mut r = post(form("minion_wrong", "%2Fpools"));
    assert_eq!(status(&r), 401);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap_or_default()
        .contains("not known"));
    let r = post(form(&t.tokens["read"], "%2Fpools"));
    assert_eq!(status(&r), 303);
    assert_eq!(location(&r), "/pools");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let pair = cookie.split(';').next().expect("name=value").to_string();
    let mut r = agent
        .get(format!("{site}/pools"))
        .header("Cookie", &pair)
        .call()
        .expect("pools");
    assert_eq!(status(&r), 200);
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = r.body_mut().read_to_string().expect("html");
    assert!(
        html.contains("<table class=\"pools\" id=\"pools\">"),
        "{html}"
    );
    assert!(
        html.contains("token:read-bot"),
        "the page says who is signed in"
    );
    let r = post(form(&t.tokens["read"], "%2F%2Fevil.example%2F"));
    assert_eq!(location(&r), "/", "no open redirect");
    assert!(t.d.log().contains("refused a dashboard sign-in"), "logged");
}
