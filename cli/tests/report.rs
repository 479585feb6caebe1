//! `minion runtask --report`: results POSTed to a ResultsDB v2.0 API, through the real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

fn python_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-check")
}

fn runtask(run_dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minion"))
        .args([
            "runtask",
            "-i",
            "foo-1.0-1.fc40",
            "-t",
            "koji_build",
            "--artifactsdir",
        ])
        .arg(run_dir)
        .args(extra)
        .arg(python_example())
        .output()
        .expect("minion runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A real HTTP listener standing in for ResultsDB (`FakeResultsDb`): records each request line and
/// body, answers 201.
fn fake_resultsdb() -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let _ = tx.send((request_line.trim().to_string(), text(&body)));
            let mut s = stream;
            let _ = s.write_all(
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
        }
    });
    (url, rx)
}

#[test]
fn report_posts_each_result_to_resultsdb_v2() {
    let (url, rx) = fake_resultsdb();
    let tmp = tempfile::tempdir().expect("tempdir");
    let uuid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    let out = runtask(
        &tmp.path().join("run"),
        &["--uuid", uuid, "--report", "--resultsdb-url", &url],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (line, body) = rx.recv_timeout(Duration::from_secs(5)).expect("one POST");
    assert_eq!(line, "POST /api/v2.0/results HTTP/1.1");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(v["testcase"]["name"], "qa.nvr_format", "{body}");
    assert_eq!(v["outcome"], "PASSED", "{body}");
    assert_eq!(v["data"]["item"], "foo-1.0-1.fc40", "{body}");
    assert_eq!(v["data"]["type"], "koji_build", "{body}");
    assert_eq!(v["groups"][0], uuid, "{body}");
    // One result, one POST.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn report_to_an_unreachable_resultsdb_fails_the_execution() {
    // Bound then dropped: nothing listens on that port any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = runtask(
        &tmp.path().join("run"),
        &[
            "--report",
            "--resultsdb-url",
            &format!("http://127.0.0.1:{port}"),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot report to ResultsDB"), "{stderr}");
}

#[test]
fn without_report_nothing_is_posted() {
    let (url, rx) = fake_resultsdb();
    let tmp = tempfile::tempdir().expect("tempdir");
    // The URL alone (e.g. from MINION_RESULTSDB_URL) does not turn reporting on.
    let out = runtask(&tmp.path().join("run"), &["--resultsdb-url", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}
