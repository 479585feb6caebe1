//! The pipeline end to end: a real RabbitMQ, a real `minion-trigger run`, a real miniond and real
//! VMs. A koji build COMPLETE message (the fields of koji-fedoramessaging-messages' schema) →
//! trigger rules → a named task and a task discovered in a local dist-git repo → jobs that run
//! in fresh VMs. Then: the trigger killed between its submissions and its ack makes no second
//! job on redelivery; a malformed message is acked and makes nothing; a burst of tag messages
//! within the fuse makes one job.
//!
//! Each test has its own topic prefix and queue, so nothing crosses between tests or runs.

mod common;

use common::*;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use minion_testenv::git;

const AMQP: &str = "amqp://127.0.0.1:5672/%2f";

fn pipeline_env(test: &str) -> bool {
    use minion_testenv::Need;
    let trigger = bin_dir().join("minion-trigger");
    vm_env(test)
        && minion_testenv::require(
            test,
            &[
                Need::Tcp {
                    addr: "127.0.0.1:5672",
                    what: "RabbitMQ",
                    start: "scripts/rabbitmq-start.sh",
                },
                Need::File {
                    path: &trigger,
                    make: "cargo build -p minion-trigger",
                },
                Need::Program("git"),
                Need::Program("rabbitmqctl"),
            ],
        )
}

/// A trigger with its own prefix, queue, config and rules, talking to daemon `d`.
struct Trigger {
    child: Option<Child>,
    dir: tempfile::TempDir,
    prefix: String,
    queue: String,
    /// Where its `/metrics` is served.
    metrics_port: u16,
}

impl Trigger {
    fn new(d: &Daemon, tag: &str, rules: &str, tasks: &[(&str, &Path)], fuse: u64) -> Trigger {
        let dir = tempfile::tempdir().expect("trigger dir");
        let unique = format!("e2e{}{}", std::process::id(), tag);
        let prefix = format!("org.minion-{unique}");
        let queue = format!("minion-{unique}");
        let mut task_lines = String::new();
        for (name, path) in tasks {
            task_lines.push_str(&format!("{name} = {:?}\n", path.display().to_string()));
        }
        std::fs::write(dir.path().join("rules.yml"), rules).expect("rules");
        let metrics_port = free_port();
        std::fs::write(
            dir.path().join("trigger.toml"),
            format!(
                "topic_prefix = {prefix:?}\nenvironment = \"prod\"\nfuse_seconds = {fuse}\n\
                 metrics_listen = \"127.0.0.1:{metrics_port}\"\n\
                 rules = {rules:?}\ncache_dir = {cache:?}\n\
                 [amqp]\nurl = {AMQP:?}\nqueue = {queue:?}\n\
                 [miniond]\nsocket = {socket:?}\n[tasks]\n{task_lines}",
                rules = dir.path().join("rules.yml"),
                cache = dir.path().join("cache"),
                socket = d.socket,
            ),
        )
        .expect("config");
        Trigger {
            child: None,
            dir,
            prefix,
            queue,
            metrics_port,
        }
    }

    fn topic(&self, suffix: &str) -> String {
        format!("{}.prod.{suffix}", self.prefix)
    }

    fn spawn(&mut self, fault: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("trigger.log"))
            .expect("log");
        let mut cmd = Command::new(bin_dir().join("minion-trigger"));
        cmd.arg("--config")
            .arg(self.dir.path().join("trigger.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(f) = fault {
            cmd.env("MINION_TRIGGER_FAULT", f);
        }
        self.child = Some(cmd.spawn().expect("minion-trigger starts"));
        // Consuming once the queue exists with a consumer.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.consumers() < 1 {
            assert!(
                Instant::now() < deadline,
                "trigger never consumed: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("trigger.log")).unwrap_or_default()
    }

    /// (messages ready + unacked, consumers) of the queue, from the broker.
    fn queue_state(&self) -> Option<(u64, u64)> {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "list_queues", "name", "messages", "consumers"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&self.queue.as_str()))
                .then(|| Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?)))
                .flatten()
        })
    }

    fn consumers(&self) -> u64 {
        self.queue_state().map_or(0, |s| s.1)
    }

    fn wait_drained(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.queue_state().is_some_and(|s| s.0 == 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {} not drained: {:?}\n{}",
                self.queue,
                self.queue_state(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                self.child = None;
                return st.code();
            }
            assert!(Instant::now() < deadline, "trigger did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &self.queue])
            .output();
    }
}

/// Publishes a Fedora-Messaging-shaped message (JSON body, its headers, a message id) with
/// publisher confirms.
fn publish(topic: &str, id: &str, body: &[u8], headers: bool) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conn = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let mut props = BasicProperties::default()
            .with_message_id(ShortString::from(id))
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into());
        if headers {
            let mut h = FieldTable::default();
            h.insert(
                "fedora_messaging_schema".into(),
                AMQPValue::LongString("koji_fedoramessaging.build.BuildStateChangeV1".into()),
            );
            h.insert("fedora_messaging_severity".into(), AMQPValue::LongInt(20));
            h.insert(
                "sent-at".into(),
                AMQPValue::LongString("2026-11-30T10:20:01+00:00".into()),
            );
            props = props.with_headers(h);
        }
        let confirm = ch
            .basic_publish(
                "amq.topic".into(),
                topic.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker took the message");
        let _ = conn.close(0, "done".into()).await;
    });
}

fn koji_complete(name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "name": name, "version": "1.0", "release": "1.fc40", "epoch": null,
        "attribute": "state", "old": 0, "new": 1, "build_id": 2345678, "task_id": 123456789,
        "task": null, "request": null, "owner": "packager", "instance": "primary",
        "creation_time": "2026-11-30T10:00:00+00:00", "completion_time": "2026-11-30T10:20:00+00:00"
    }))
    .expect("json")
}

/// A dist-git repository for `foo` whose main branch carries `tests/smoke/runtask.yml`.
fn distgit(root: &Path) -> String {
    let repo = root.join("rpms/foo.git");
    std::fs::create_dir_all(repo.join("tests/smoke")).expect("mkdir");
    git(&repo, &["init", "--quiet"]);
    std::fs::write(repo.join("foo.spec"), "Name: foo\n").expect("spec");
    std::fs::write(
        repo.join("tests/smoke/runtask.yml"),
        "name: smoke\ninput:\n  args: [koji_build]\nactions:\n  - name: smoke\n    shell:\n      - echo smoke test of ${koji_build}\n",
    )
    .expect("formula");
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "smoke test"]);
    format!("file://{}/rpms/${{name}}.git", root.display())
}

/// The jobs made from message `id` (by their provenance).
fn jobs_of(d: &Daemon, id: &str) -> Vec<Value> {
    d.json(&["job", "list", "--limit", "1000"])
        .as_array()
        .expect("list")
        .iter()
        .filter(|j| j["provenance"]["message_id"] == id)
        .cloned()
        .collect()
}

fn wait_jobs(d: &Daemon, id: &str, n: usize, t: &Trigger) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = jobs_of(d, id);
        if jobs.len() >= n {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} jobs for {id}\n--- trigger ---\n{}",
            jobs.len(),
            t.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const RULES: &str = r#"
- when: {message_type: KojiBuildPackageCompleted}
  do:
    - {tasks: [check]}
- when:
    message_type: KojiBuildPackageCompleted
    name: {$nin: [kernel]}
  do:
    - {tasks: [check]}
    - discover: {repo: 'DISTGIT', branch: '${distgit_branch}', fallback_branch: main, recursive: true}
"#;

#[test]
fn a_koji_message_becomes_named_and_discovered_jobs_that_run_in_vms() {
    if !pipeline_env("a_koji_message_becomes_named_and_discovered_jobs_that_run_in_vms") {
        return;
    }
    // The whole flow: results go to the ResultsDB stand-in and result.new onto the bus.
    let rdb = minion_testenv::resultsdb::ResultsDbStandIn::start();
    let bus_prefix = format!("org.minion-e2e-a{}.prod", std::process::id());
    let d = Daemon::start_with(
        2,
        0,
        &format!(
            "\n[reporting]\nresultsdb_url = \"{}\"\nartifacts_base_url = \"http://127.0.0.1:1\"\n\
             safe_namespaces = [\"qa\"]\n[bus]\nurl = \"{AMQP}\"\ntopic_prefix = \"{bus_prefix}\"\n",
            rdb.url
        ),
    );
    let bus = bus_listener(&bus_prefix);
    let srv = tempfile::tempdir().expect("srv");
    let rules = RULES.replace("DISTGIT", &distgit(srv.path()));
    // The named task is the python example: it reports a result (namespace qa).
    let task = workspace_root().join("examples/python-check");
    let mut t = Trigger::new(&d, "a", &rules, &[("check", task.as_path())], 0);
    t.spawn(None);
    let id = "9f0d6b1e-0000-4000-8000-000000000001";
    publish(
        &t.topic("buildsys.build.state.change"),
        id,
        &koji_complete("foo"),
        true,
    );

    // Two rules name `check`: one job for it; one discovered task.
    let jobs = wait_jobs(&d, id, 2, &t);
    t.wait_drained(Duration::from_secs(30));
    let mut tasks: Vec<String> = jobs
        .iter()
        .map(|j| {
            j["provenance"]["task_name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    tasks.sort();
    assert_eq!(tasks.len(), 2, "{jobs:#?}");
    assert_eq!(tasks[0], "check");
    assert!(tasks[1].ends_with("/rpms/foo.git#tests/smoke"), "{tasks:?}");
    for j in &jobs {
        assert_eq!(j["item"], "foo-1.0-1.fc40");
        assert_eq!(j["item_type"], "koji_build");
        assert_eq!(
            j["provenance"]["topic"],
            t.topic("buildsys.build.state.change")
        );
        let id = j["id"].as_str().expect("id");
        let done = d.wait_state(id, &["FINISHED", "FAILED"], Duration::from_secs(120));
        assert_eq!(done["state"], "FINISHED", "{done:#}");
        assert_eq!(done["execution_status"], "OK", "{done:#}");
        d.assert_no_vm(id);
    }
    let discovered = jobs
        .iter()
        .find(|j| {
            j["formula"]
                .as_str()
                .is_some_and(|f| f.contains("tests/smoke"))
        })
        .expect("the discovered job runs the dir's formula");
    assert_eq!(discovered["provenance"]["rule_index"], 1);
    let log = d.cli(&["job", "logs", discovered["id"].as_str().expect("id")]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("smoke test of foo-1.0-1.fc40"));

    // The named job's result is in ResultsDB, and its result.new came over the bus.
    let posted = rdb.results();
    assert_eq!(posted.len(), 1, "{posted:#?}");
    assert_eq!(posted[0]["testcase"]["name"], "qa.nvr_format");
    assert_eq!(posted[0]["data"]["item"], "foo-1.0-1.fc40");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (topic, body) = bus.recv_timeout(left).expect("result.new on the bus");
        if topic == format!("{bus_prefix}.result.new") {
            assert_eq!(body["testcase"], "qa.nvr_format");
            assert_eq!(body["item"], "foo-1.0-1.fc40");
            break;
        }
    }

    // A malformed message (no headers; a body that is not JSON): acked, no job.
    publish(
        &t.topic("buildsys.build.state.change"),
        "bad-1",
        b"not json",
        true,
    );
    publish(
        &t.topic("buildsys.build.state.change"),
        "bad-2",
        &koji_complete("foo"),
        false,
    );
    t.wait_drained(Duration::from_secs(30));
    assert!(jobs_of(&d, "bad-1").is_empty() && jobs_of(&d, "bad-2").is_empty());
    let log = t.log();
    assert!(log.contains("malformed message, acked"), "{log}");

    // What became of the messages and jobs, as Prometheus reads it (promtool lints it).
    let (status, text) = http_get(&format!("http://127.0.0.1:{}/metrics", t.metrics_port));
    assert_eq!(status, 200);
    for want in [
        "minion_trigger_messages_total{outcome=\"triggered\"} 1\n",
        "minion_trigger_messages_total{outcome=\"malformed\"} 2\n",
        "minion_trigger_jobs_total{outcome=\"queued\"} 2\n",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    if minion_testenv::require(
        "trigger metrics pass promtool",
        &[minion_testenv::Need::Program("promtool")],
    ) {
        let (ok, said) = promtool_check(&text);
        assert!(ok && said.trim().is_empty(), "promtool: {said}");
    }
}

#[test]
fn a_trigger_killed_before_its_ack_makes_no_second_job() {
    if !pipeline_env("a_trigger_killed_before_its_ack_makes_no_second_job") {
        return;
    }
    let d = Daemon::start(2, 0);
    let task = task_repo(PASSING);
    let rules =
        "- when: {message_type: KojiBuildPackageCompleted}\n  do:\n    - {tasks: [check, again]}\n";
    let mut t = Trigger::new(
        &d,
        "k",
        rules,
        &[("check", task.path()), ("again", task.path())],
        0,
    );
    t.spawn(Some("exit-before-ack"));
    let id = "9f0d6b1e-0000-4000-8000-000000000002";
    publish(
        &t.topic("buildsys.build.state.change"),
        id,
        &koji_complete("bar"),
        true,
    );
    // It submits both jobs, then dies before acking: the message stays on the queue.
    assert_eq!(
        t.wait_exit(Duration::from_secs(60)),
        Some(86),
        "{}",
        t.log()
    );
    assert_eq!(jobs_of(&d, id).len(), 2);
    assert_eq!(
        t.queue_state().map(|s| s.0),
        Some(1),
        "unacked, back on the queue"
    );
    // Restarted, it gets the message again: the same two jobs, none new, and the ack.
    t.spawn(None);
    t.wait_drained(Duration::from_secs(30));
    let jobs = jobs_of(&d, id);
    assert_eq!(jobs.len(), 2, "no job doubled: {jobs:#?}");
    assert!(
        t.log().contains("already queued (redelivery)"),
        "{}",
        t.log()
    );
    for j in &jobs {
        let id = j["id"].as_str().expect("id");
        let done = d.wait_state(id, &["FINISHED", "FAILED"], Duration::from_secs(120));
        assert_eq!(done["state"], "FINISHED", "{done:#}");
    }
}

#[test]
fn a_burst_of_tag_messages_within_the_fuse_makes_one_job() {
    if !pipeline_env("a_burst_of_tag_messages_within_the_fuse_makes_one_job") {
        return;
    }
    let d = Daemon::start(1, 0);
    let task = task_repo(PASSING);
    let rules = "- when: {message_type: KojiTagChanged, tag: {$regex: '/^f[0-9]{2}-updates-testing-pending$/'}}\n  do:\n    - {tasks: [check]}\n";
    let mut t = Trigger::new(&d, "f", rules, &[("check", task.path())], 3);
    t.spawn(None);
    let body = |n: &str| {
        serde_json::to_vec(&serde_json::json!({
            "tag": "f40-updates-testing-pending", "name": n, "version": "1", "release": "1.fc40",
            "build_id": 1, "owner": "o", "instance": "primary", "user": "u"
        }))
        .expect("json")
    };
    let ids = ["tag-1", "tag-2", "tag-3"];
    for (i, id) in ids.iter().enumerate() {
        publish(
            &t.topic("buildsys.tag"),
            id,
            &body(&format!("pkg{i}")),
            true,
        );
    }
    t.wait_drained(Duration::from_secs(60));
    let all: Vec<Value> = ids.iter().flat_map(|id| jobs_of(&d, id)).collect();
    assert_eq!(all.len(), 1, "one job for the burst: {all:#?}\n{}", t.log());
    assert_eq!(all[0]["item"], "f40-updates-testing-pending");
    assert_eq!(all[0]["item_type"], "koji_tag");
    let id = all[0]["id"].as_str().expect("id");
    let done = d.wait_state(id, &["FINISHED", "FAILED"], Duration::from_secs(120));
    assert_eq!(done["state"], "FINISHED", "{done:#}");
}

/// Collects the messages of `<prefix>.#` on its own exclusive queue, on a thread.
fn bus_listener(prefix: &str) -> std::sync::mpsc::Receiver<(String, Value)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let key = format!("{prefix}.#");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            use futures_lite::StreamExt;
            let conn = Connection::connect(AMQP, ConnectionProperties::default())
                .await
                .expect("connect");
            let ch = conn.create_channel().await.expect("channel");
            let q = ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("queue");
            ch.queue_bind(
                q.name().clone(),
                "amq.topic".into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
            let mut c = ch
                .basic_consume(
                    q.name().clone(),
                    "e2e".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume");
            let _ = ready_tx.send(());
            while let Some(Ok(d)) = c.next().await {
                let body: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                let schema = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("fedora_messaging_schema").cloned());
                let mut body = body;
                body["_schema"] = Value::String(match schema {
                    Some(AMQPValue::LongString(s)) => {
                        String::from_utf8_lossy(s.as_bytes()).into_owned()
                    }
                    other => format!("{other:?}"),
                });
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                if tx.send((d.routing_key.as_str().to_string(), body)).is_err() {
                    return;
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("bus listener ready");
    rx
}

#[test]
fn job_events_and_posted_results_reach_the_bus() {
    if !pipeline_env("job_events_and_posted_results_reach_the_bus") {
        return;
    }
    let rdb = minion_testenv::resultsdb::ResultsDbStandIn::start();
    let prefix = format!("org.minion-e2e{}.prod", std::process::id());
    let extra = format!(
        "\n[reporting]\nresultsdb_url = \"{}\"\nartifacts_base_url = \"http://127.0.0.1:1\"\n\
         safe_namespaces = [\"qa\"]\n[bus]\nurl = \"{AMQP}\"\ntopic_prefix = \"{prefix}\"\n",
        rdb.url
    );
    let d = Daemon::start_with(1, 0, &extra);
    let got = bus_listener(&prefix);
    let python = workspace_root().join("examples/python-check");
    let id = d.submit(&python, &[]);
    let j = d.wait_state(&id, &["FINISHED", "FAILED"], Duration::from_secs(120));
    assert_eq!(j["state"], "FINISHED", "{j:#}");
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (topic, body) = got
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("bus messages so far: {seen:#?}\n{}", d.log()));
        seen.insert(topic, body);
    }
    let new = &seen[&format!("{prefix}.result.new")];
    assert_eq!(new["job"], id.as_str());
    assert_eq!(new["item"], "foo-1.0-1.fc40");
    assert_eq!(new["type"], "koji_build");
    assert_eq!(new["testcase"], "qa.nvr_format");
    assert_eq!(new["outcome"], "PASSED");
    assert!(
        new["ref_url"].as_str().is_some_and(|u| u.contains(&id)),
        "{new:#}"
    );
    assert!(new["_schema"]
        .as_str()
        .is_some_and(|s| s.contains("minion.result.new.v1")));
    let fin = &seen[&format!("{prefix}.job.finished")];
    assert_eq!(fin["job"], id.as_str());
    assert_eq!(fin["state"], "FINISHED");
    assert_eq!(fin["execution_status"], "OK");
    assert_eq!(rdb.results().len(), 1);
}

#[test]
fn while_miniond_is_down_the_trigger_holds_the_message_and_retries() {
    if !pipeline_env("while_miniond_is_down_the_trigger_holds_the_message_and_retries") {
        return;
    }
    let mut d = Daemon::start(1, 0);
    let task = task_repo(PASSING);
    let rules =
        "- when: {message_type: KojiBuildPackageCompleted}\n  do:\n    - {tasks: [check]}\n";
    let mut t = Trigger::new(&d, "d", rules, &[("check", task.path())], 0);
    t.spawn(None);
    d.kill9();
    let id = "9f0d6b1e-0000-4000-8000-000000000004";
    publish(
        &t.topic("buildsys.build.state.change"),
        id,
        &koji_complete("baz"),
        true,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        t.queue_state().map(|s| s.0),
        Some(1),
        "not acked while miniond is down"
    );
    assert!(
        t.log().contains("miniond cannot take the job now"),
        "{}",
        t.log()
    );
    d.spawn();
    t.wait_drained(Duration::from_secs(60));
    let jobs = jobs_of(&d, id);
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    let j = d.wait_state(
        jobs[0]["id"].as_str().expect("id"),
        &["FINISHED", "FAILED"],
        Duration::from_secs(120),
    );
    assert_eq!(j["state"], "FINISHED", "{j:#}");
}
