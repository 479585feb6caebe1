//! The dashboard in a real headless browser (Debian's chromium, driven over WebDriver by
//! chromedriver): a running job's page shows log lines as they arrive and then the final state;
//! the jobs list filters; an artifact opens outside the dashboard's origin. Screenshots are kept
//! under target/test-artifacts/.

mod common;
use common::*;
use minion_testenv::Need;
use serde_json::json;

/// Prints a line a second for a while, then leaves a file behind as an artifact.
const SLOW_LINES: &str = r#"name: e2e-slow-lines
desc: prints a numbered line every second
maintainer: minion
actions:
  - name: count
    shell:
      - seq 1 8 | xargs -I{} sh -c 'echo "line {} of 8"; sleep 1'
      - echo "report for the browser" > ${artifactsdir}/report.txt
"#;

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.get(format!("{root}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1100"]
            }
        }}});
        let v: Value = agent
            .post(format!("{root}/session"))
            .send_json(&caps)
            .expect("new session")
            .body_mut()
            .read_json()
            .expect("JSON");
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Browser {
            driver,
            base: format!("{root}/session/{id}"),
            agent,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let v: Value = self
            .agent
            .post(format!("{}{path}", self.base))
            .send_json(&body)
            .expect("webdriver call")
            .body_mut()
            .read_json()
            .expect("JSON");
        assert!(v["value"].get("error").is_none(), "{path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
    }

    fn text(&self, selector: &str) -> String {
        let s = serde_json::to_string(selector).expect("json");
        self.js(&format!(
            "const e = document.querySelector({s}); return e ? e.textContent : null;"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let v: Value = self
            .agent
            .get(format!("{}/screenshot", self.base))
            .call()
            .expect("screenshot")
            .body_mut()
            .read_json()
            .expect("JSON");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().expect("base64"))
            .expect("PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = workspace_root().join("target/test-artifacts");
        std::fs::create_dir_all(&dir).expect("artifacts dir");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Polls `f` every 200 ms until it is true.
    fn until(&self, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            if Instant::now() >= deadline {
                let page = self.js("return document.documentElement.outerHTML;");
                panic!(
                    "timed out waiting for {what}; the page:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn a_browser_sees_a_running_jobs_log_live_filters_jobs_and_opens_an_artifact_sandboxed() {
    let test =
        "a_browser_sees_a_running_jobs_log_live_filters_jobs_and_opens_an_artifact_sandboxed";
    if !vm_env_with(
        test,
        &[Need::Program("chromium"), Need::Program("chromedriver")],
    ) {
        return;
    }
    let port = free_port();
    let d = Daemon::start_with(2, 0, &format!("listen_http = \"127.0.0.1:{port}\""));
    let site = format!("http://127.0.0.1:{port}");
    let done_repo = task_repo(PASSING);
    let earlier = d.submit(done_repo.path(), &[]);
    d.wait_state(&earlier, &["FINISHED"], Duration::from_secs(120));
    let slow = task_repo(SLOW_LINES);
    let id = d.submit(slow.path(), &[]);
    d.wait_state(&id, &["RUNNING"], Duration::from_secs(120));

    let b = Browser::start();
    b.go(&format!("{site}/jobs/{id}"));
    // Lines arrive while the job still runs: a later line shows up in the page, unreloaded,
    // while the daemon says the job is RUNNING.
    b.until("line 2 in the page", Duration::from_secs(30), || {
        b.text("#log").contains("line 2 of 8")
    });
    let marker = b.js("window.__same_page = true; return true;");
    assert_eq!(marker, json!(true));
    b.until("line 5 in the page", Duration::from_secs(30), || {
        b.text("#log").contains("line 5 of 8")
    });
    assert_eq!(d.job(&id)["state"], "RUNNING", "seen live, before the end");
    assert_eq!(
        b.js("return window.__same_page === true;"),
        json!(true),
        "not reloaded"
    );
    assert_eq!(b.text("#state"), "RUNNING");
    b.screenshot("dashboard-job-running.png");
    b.until("the final state", Duration::from_secs(90), || {
        b.text("#state") == "FINISHED"
    });
    // The reload after the end renders results and artifacts on the server.
    b.until("the artifacts list", Duration::from_secs(30), || {
        b.text("#artifacts").contains("report.txt")
    });
    b.until("the whole log, replayed", Duration::from_secs(10), || {
        b.text("#log").contains("line 8 of 8")
    });
    let shot = b.screenshot("dashboard-job-finished.png");
    eprintln!("screenshot: {}", shot.display());

    // An artifact opens in its own, opaque origin: never the dashboard's.
    let href = b
        .js("return [...document.querySelectorAll('#artifacts a')].map(a => a.href).find(h => h.endsWith('report.txt'));")
        .as_str()
        .expect("the artifact's link")
        .to_string();
    b.go(&href);
    b.until("the artifact", Duration::from_secs(10), || {
        b.text("body").contains("report for the browser")
    });
    assert_eq!(b.js("return window.origin;"), json!("null"), "sandboxed");

    // The jobs list, filtered through its form.
    b.go(&format!("{site}/"));
    let rows = |b: &Browser| -> Vec<String> {
        b.js("return [...document.querySelectorAll('tr.job')].map(r => r.dataset.id);")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    b.until("both jobs listed", Duration::from_secs(10), || {
        rows(&b).len() == 2
    });
    assert_eq!(rows(&b), [id.clone(), earlier.clone()], "newest first");
    let task = slow
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("the repo's name")
        .to_string();
    b.js(&format!(
        "document.querySelector('input[name=task]').value = {};
         document.querySelector('select[name=state]').value = 'FINISHED';
         document.querySelector('form.filters').submit(); return true;",
        serde_json::to_string(&task).expect("json")
    ));
    b.until("the filtered list", Duration::from_secs(10), || {
        b.js("return location.search;")
            .as_str()
            .is_some_and(|s| s.contains("state=FINISHED"))
    });
    b.until("one job of that task", Duration::from_secs(10), || {
        rows(&b) == [id.clone()]
    });
    b.go(&format!("{site}/?state=FINISHED"));
    b.until("both finished", Duration::from_secs(10), || {
        rows(&b).len() == 2
    });
    b.go(&format!("{site}/?state=CANCELLED"));
    b.until("an empty list", Duration::from_secs(10), || {
        b.text("#jobs").contains("No jobs match")
    });
    b.go(&format!("{site}/?submitter=uid%3A0"));
    b.until("root's jobs", Duration::from_secs(10), || {
        rows(&b).len() == 2
    });
    b.screenshot("dashboard-jobs-filtered.png");
}
