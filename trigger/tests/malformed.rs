//! Bad input, each case with its exact outcome: 30 messages that are malformed or start no job,
//! and 20 rules files that the trigger refuses to start on (file, line, column, field).

use std::path::Path;

use minion_trigger::config::Config;
use minion_trigger::message::{decide, BusMessage, Decision};
use minion_trigger::rules::Rules;
use serde_json::{json, Value};

/// A koji build COMPLETE body with the fields of koji-fedoramessaging-messages'
/// `BuildStateChangeV1` schema.
fn koji_body() -> Value {
    json!({
        "name": "foo", "version": "1.0", "release": "1.fc40", "epoch": null,
        "attribute": "state", "old": 0, "new": 1, "build_id": 2345678, "task_id": 123456789,
        "task": null, "request": ["git+https://src.fedoraproject.org/rpms/foo.git#abc", "f40-candidate", {}],
        "owner": "packager", "instance": "primary",
        "creation_time": "2026-11-30T10:00:00+00:00", "completion_time": "2026-11-30T10:20:00+00:00"
    })
}

fn headers() -> Value {
    json!({
        "fedora_messaging_schema": "koji_fedoramessaging.build.BuildStateChangeV1",
        "fedora_messaging_severity": 20,
        "sent-at": "2026-11-30T10:20:01+00:00",
        "priority": 0
    })
}

fn msg(topic: &str, headers: Option<Value>, body: &[u8]) -> BusMessage {
    BusMessage {
        id: "4e1b8d3c-8d3e-4a8a-9d5e-0c2f6f1d9a10".into(),
        topic: topic.into(),
        headers: headers.and_then(|h| h.as_object().cloned()),
        body: body.to_vec(),
    }
}

const BUILD: &str = "org.fedoraproject.prod.buildsys.build.state.change";

fn with(mut body: Value, path: &[&str], v: Option<Value>) -> Vec<u8> {
    let mut cur = &mut body;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    let last = path[path.len() - 1];
    match v {
        Some(v) => cur[last] = v,
        None => {
            cur.as_object_mut().expect("object").remove(last);
        }
    }
    serde_json::to_vec(&body).expect("json")
}

#[test]
fn a_real_koji_complete_message_becomes_the_dict() {
    let cfg = Config::default();
    let m = msg(
        BUILD,
        Some(headers()),
        &serde_json::to_vec(&koji_body()).expect("json"),
    );
    let Decision::Trigger(t) = decide(&m, &cfg) else {
        panic!("{:?}", decide(&m, &cfg));
    };
    assert_eq!(t.str("message_type"), "KojiBuildPackageCompleted");
    assert_eq!(t.str("item"), "foo-1.0-1.fc40");
    assert_eq!(t.str("item_type"), "koji_build");
    assert_eq!(t.str("distgit_branch"), "f40");
    assert_eq!(t.get("_msg"), Some(&koji_body()));
}

#[test]
fn thirty_bad_or_foreign_messages_each_with_its_outcome() {
    let cfg = Config::default();
    let kb = koji_body;
    let tag_body = json!({"tag": "f40-updates-candidate", "name": "foo", "version": "1.0",
        "release": "1.fc40", "build_id": 1, "owner": "o", "instance": "primary", "user": "u"});
    let git_body = json!({"commit": {"repo": "foo", "namespace": "rpms", "branch": "f40", "rev": "abc123", "username": "u"}});
    let compose = json!({"status": "FINISHED", "compose_id": "Fedora-40-20261130.n.0", "location": "https://kojipkgs/compose/x"});
    let bodhi = json!({"update": {"alias": "FEDORA-2026-abc", "builds": [{"nvr": "foo-1.0-1.fc40"}], "release": {"name": "F40"}}});
    let b = |v: &Value| serde_json::to_vec(v).expect("json");
    let cases: Vec<(&str, BusMessage, &str)> = vec![
        ("no headers", msg(BUILD, None, &b(&kb())), "malformed: no headers (not a Fedora Messaging publisher)"),
        ("empty headers", msg(BUILD, Some(json!({})), &b(&kb())), "malformed: no headers (not a Fedora Messaging publisher)"),
        ("not json", msg(BUILD, Some(headers()), b"<xml/>"), "malformed: body is not JSON: expected value at line 1 column 1"),
        ("truncated json", msg(BUILD, Some(headers()), b"{\"name\": \"foo\""), "malformed: body is not JSON: EOF while parsing an object at line 1 column 14"),
        ("empty body", msg(BUILD, Some(headers()), b""), "malformed: body is not JSON: EOF while parsing a value at line 1 column 0"),
        ("a list body", msg(BUILD, Some(headers()), b"[1, 2]"), "malformed: body is not a JSON object"),
        ("a string body", msg(BUILD, Some(headers()), b"\"hi\""), "malformed: body is not a JSON object"),
        ("no name", msg(BUILD, Some(headers()), &with(kb(), &["name"], None)), "malformed: body.name: missing"),
        ("no version", msg(BUILD, Some(headers()), &with(kb(), &["version"], None)), "malformed: body.version: missing"),
        ("no release", msg(BUILD, Some(headers()), &with(kb(), &["release"], None)), "malformed: body.release: missing"),
        ("no new", msg(BUILD, Some(headers()), &with(kb(), &["new"], None)), "malformed: body.new: missing"),
        ("new is text", msg(BUILD, Some(headers()), &with(kb(), &["new"], Some(json!("1")))), "malformed: body.new: must be an integer"),
        ("name is a list", msg(BUILD, Some(headers()), &with(kb(), &["name"], Some(json!(["foo"])))), "malformed: body.name: must be a string"),
        ("name is empty", msg(BUILD, Some(headers()), &with(kb(), &["name"], Some(json!("")))), "malformed: body.name: must be a non-empty string"),
        ("instance is a number", msg(BUILD, Some(headers()), &with(kb(), &["instance"], Some(json!(3)))), "ignored: koji instance `3`, not `primary`"),
        ("no message id", BusMessage { id: String::new(), ..msg(BUILD, Some(headers()), &b(&kb())) }, "malformed: no message id"),
        ("a tag message without a tag", msg("org.fedoraproject.prod.buildsys.tag", Some(headers()), &with(tag_body.clone(), &["tag"], None)), "malformed: body.tag: missing"),
        ("a push without commit", msg("org.fedoraproject.prod.git.receive", Some(headers()), &b(&json!({"repo": "foo"}))), "malformed: body.commit.repo: missing"),
        ("a push whose commit is text", msg("org.fedoraproject.prod.git.receive", Some(headers()), &b(&json!({"commit": "abc"}))), "malformed: body.commit: must be an object"),
        ("a push without rev", msg("org.fedoraproject.prod.git.receive", Some(headers()), &with(git_body.clone(), &["commit", "rev"], None)), "malformed: body.commit.rev: missing"),
        ("a compose without id", msg("org.fedoraproject.prod.pungi.compose.status.change", Some(headers()), &with(compose.clone(), &["compose_id"], None)), "malformed: body.compose_id: missing"),
        ("an update whose builds are text", msg("org.fedoraproject.prod.bodhi.update.request.testing", Some(headers()), &with(bodhi.clone(), &["update", "builds"], Some(json!("foo")))), "malformed: body.update.builds: must be a list"),
        ("an update build without nvr", msg("org.fedoraproject.prod.bodhi.update.request.testing", Some(headers()), &with(bodhi.clone(), &["update", "builds"], Some(json!([{"id": 1}])))), "malformed: body.update.builds[0].nvr: must be a string"),
        // Messages that are fine but start no job.
        ("a build that started", msg(BUILD, Some(headers()), &with(kb(), &["new"], Some(json!(0)))), "ignored: build state 0, not COMPLETE (1)"),
        ("a build that failed", msg(BUILD, Some(headers()), &with(kb(), &["new"], Some(json!(3)))), "ignored: build state 3, not COMPLETE (1)"),
        ("a secondary koji", msg(BUILD, Some(headers()), &with(kb(), &["instance"], Some(json!("s390")))), "ignored: koji instance `s390`, not `primary`"),
        ("staging", msg("org.fedoraproject.stg.buildsys.build.state.change", Some(headers()), &b(&kb())), "ignored: topic org.fedoraproject.stg.buildsys.build.state.change is of environment `stg`, not `prod`"),
        ("another bus", msg("org.centos.prod.buildsys.build.state.change", Some(headers()), &b(&kb())), "ignored: topic org.centos.prod.buildsys.build.state.change is not under org.fedoraproject"),
        ("a compose still running", msg("org.fedoraproject.prod.pungi.compose.status.change", Some(headers()), &with(compose.clone(), &["status"], Some(json!("STARTED")))), "ignored: compose status STARTED, not finished"),
        ("an untag", msg("org.fedoraproject.prod.buildsys.untag", Some(headers()), &b(&tag_body)), "ignored: topic suffix `buildsys.untag` starts no jobs"),
    ];
    assert_eq!(cases.len(), 30);
    for (what, m, want) in cases {
        let got = match decide(&m, &cfg) {
            Decision::Malformed(e) => format!("malformed: {e}"),
            Decision::Ignore(why) => format!("ignored: {why}"),
            Decision::Trigger(t) => format!("trigger: {}", t.str("item")),
        };
        assert_eq!(got, want, "{what}");
    }
    // And the good ones of each kind do trigger.
    for (topic, body, item) in [
        (
            "org.fedoraproject.prod.buildsys.tag",
            tag_body,
            "f40-updates-candidate",
        ),
        (
            "org.fedoraproject.prod.git.receive",
            git_body,
            "rpms/foo#abc123",
        ),
        (
            "org.fedoraproject.prod.pungi.compose.status.change",
            compose,
            "Fedora-40-20261130.n.0",
        ),
        (
            "org.fedoraproject.prod.bodhi.update.request.testing",
            bodhi,
            "FEDORA-2026-abc",
        ),
    ] {
        match decide(&msg(topic, Some(headers()), &b(&body)), &cfg) {
            Decision::Trigger(t) => assert_eq!(t.str("item"), item, "{topic}"),
            other => panic!("{topic}: {other:?}"),
        }
    }
}

#[test]
fn twenty_bad_rules_files_each_named_by_file_line_column_and_field() {
    let cfg = Config::parse(
        Path::new("t.toml"),
        "valid_arches = [\"x86_64\"]\n[tasks]\nrpmlint = \"file:///t/rpmlint\"\n",
    )
    .expect("config");
    let ok_do = "  do: [{tasks: [rpmlint]}]\n";
    let cases: Vec<(String, &str)> = vec![
        ("{when: {a: b}}\n".into(), "r.yml:1:1: rules: must be a list of rules, found a mapping"),
        ("".into(), "r.yml:1:1: rules: the file has no rules"),
        ("- when: {a: b\n".into(), "r.yml:2:1: (yaml): while parsing a flow mapping, did not find expected ',' or '}'"),
        ("- rpmlint\n".into(), "r.yml:1:3: [0]: a rule is a mapping with `when` and `do`, found a string"),
        (format!("- when: {{a: b}}\n{ok_do}  then: x\n"), "r.yml:3:3: [0].then: unknown key (a rule has `when` and `do`)"),
        (format!("- {ok_do}").replace("-   do", "- do"), "r.yml:1:3: [0].when: missing"),
        ("- when: {a: b}\n".into(), "r.yml:1:3: [0].do: missing"),
        (format!("- when: [a]\n{ok_do}"), "r.yml:1:9: [0].when: must be a mapping, found a list"),
        (format!("- when: {{}}\n{ok_do}"), "r.yml:1:9: [0].when: an empty query matches everything: say what to match"),
        (format!("- when: {{name: {{$contains: x}}}}\n{ok_do}"), "r.yml:1:17: [0].when.name.$contains: unknown operator `$contains` (known: $in, $nin, $regex, $not)"),
        (format!("- when: {{$or: [{{a: b}}]}}\n{ok_do}"), "r.yml:1:10: [0].when.$or: unknown operator `$or` here (a query takes field names, `$and`, `$not`)"),
        (format!("- when: {{name: {{$in: foo}}}}\n{ok_do}"), "r.yml:1:22: [0].when.name.$in: must be a list of values or one `${var}` naming a list, found a string"),
        (format!("- when: {{name: {{$regex: '^foo$'}}}}\n{ok_do}"), "r.yml:1:25: [0].when.name.$regex: `^foo$` must be written `/pattern/` (optionally `/pattern/i`)"),
        (format!("- when: {{name: {{$regex: '/fo(o/'}}}}\n{ok_do}"), "r.yml:1:25: [0].when.name.$regex: invalid regex: regex parse error:\n    fo(o\n      ^\nerror: unclosed group"),
        (format!("- when: {{$and: []}}\n{ok_do}"), "r.yml:1:16: [0].when.$and: must be a non-empty list of queries"),
        (format!("- when: {{name: [a, b]}}\n{ok_do}"), "r.yml:1:16: [0].when.name: a list is not a value to compare with (use `$in: [...]`)"),
        ("- when: {a: b}\n  do: []\n".into(), "r.yml:2:7: [0].do: must not be empty"),
        ("- when: {a: b}\n  do: [{tasks: [rpmlint], discover: {repo: x, branch: y}}]\n".into(), "r.yml:2:37: [0].do[0].discover: a `do` entry has `tasks` or `discover`, not both"),
        ("- when: {a: b}\n  do: [{tasks: [rpmlint, abicheck]}]\n".into(), "r.yml:2:26: [0].do[0].tasks[1]: task `abicheck` has no repository in the config ([tasks] or task_repo_template)"),
        ("- when: {a: b}\n  do: [{discover: {repo: x, branch: y, recurse: true}}]\n".into(), "r.yml:2:40: [0].do[0].discover.recurse: unknown key (known: repo, branch, fallback_branch, recursive)"),
    ];
    assert_eq!(cases.len(), 20);
    let mut wrong = Vec::new();
    for (text, want) in cases {
        match Rules::parse(Path::new("r.yml"), &text, Some(&cfg)) {
            Ok(_) => wrong.push(format!("accepted:\n{text}")),
            Err(e) if e.to_string() != want => {
                wrong.push(format!("rules:\n{text}\n  got:  {e}\n  want: {want}"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // More shapes that are refused, by their message only.
    for (text, want) in [
        (
            "- when: {a: b}\n  do: [{tasks: [rpmlint], arches: [s390x]}]\n",
            "`s390x` is not a valid arch",
        ),
        (
            "- when: {a: b}\n  do: [{discover: {branch: y}}]\n",
            "[0].do[0].discover.repo: missing",
        ),
        (
            "- when: {a: b}\n  do: [{discover: {repo: x, branch: y, recursive: 'yes'}}]\n",
            "must be true or false",
        ),
        (
            "- when: {a: b}\n  do: [rpmlint]\n",
            "a `do` entry is a mapping",
        ),
    ] {
        let e = Rules::parse(Path::new("r.yml"), text, Some(&cfg)).expect_err(want);
        assert!(e.to_string().contains(want), "{e}");
    }
}
