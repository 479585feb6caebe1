use super::*;
use crate::jobs::{JobEvent, JobRequest};

fn store(t: &tempfile::TempDir) -> Jobs {
    Jobs::open(t.path(), 1).expect("jobs")
}

fn req(item: &str, repo: &str, submitter: &str) -> JobRequest {
    JobRequest {
        pool: "fedora".into(),
        item: item.into(),
        item_type: "koji_build".into(),
        repo: repo.into(),
        submitter: submitter.into(),
        ..JobRequest::default()
    }
}

#[test]
fn what_a_guest_or_submitter_wrote_is_escaped_everywhere() {
    let t = tempfile::tempdir().expect("tmp");
    let jobs = store(&t);
    let evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    let id = "0b9c0c3e-1d7a-4d5e-9f00-123456789abc";
    jobs.create(id, req(evil, &format!("/srv/{evil}"), evil), "", None)
        .expect("create");
    jobs.apply(
        id,
        JobEvent::Cancelled {
            reason: evil.into(),
        },
    )
    .expect("cancel");
    let d = Dashboard::new().expect("templates");
    let pages = [
        d.jobs(&jobs, &[evil.to_string()], &Filters::default(), evil)
            .expect("list"),
        d.job(&jobs, id, evil).expect("job").expect("found"),
        d.item(&jobs, evil, evil).expect("item"),
        d.login(evil, Some(evil)).expect("login"),
    ];
    for html in pages {
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
    }
}

#[test]
fn the_list_filters_on_indexed_and_unindexed_fields_and_pages_newest_first() {
    let t = tempfile::tempdir().expect("tmp");
    let jobs = store(&t);
    for i in 0..130 {
        let (repo, who) = if i % 2 == 0 {
            ("/srv/tasks/rpmlint", "uid:1000")
        } else {
            ("/srv/tasks/rpmdeplint", "token:ci")
        };
        let item = format!("foo-1.0-{}.fc40", i % 3);
        jobs.create(&format!("job-{i:03}"), req(&item, repo, who), "", None)
            .expect("create");
    }
    // Indexed only: one store page.
    let ListPage {
        jobs: page,
        next,
        stopped,
    } = list_page(&jobs, &Filters::default()).expect("list");
    assert_eq!(page.len(), PAGE);
    assert_eq!(page[0].id, "job-129", "newest first");
    assert!(next.is_some() && stopped.is_none());
    // Unindexed: task and submitter, paged with `after`.
    let f = Filters::from_query(Some("task=rpmdeplint&submitter=token%3Aci&pool=fedora"));
    assert_eq!(f.submitter, "token:ci");
    let ListPage {
        jobs: first, next, ..
    } = list_page(&jobs, &f).expect("first page");
    assert_eq!(first.len(), PAGE);
    assert!(first.iter().all(|r| r.request.submitter == "token:ci"));
    let after = Filters {
        after: next,
        ..Filters::from_query(Some("task=rpmdeplint&submitter=token%3Aci"))
    };
    let ListPage {
        jobs: second, next, ..
    } = list_page(&jobs, &after).expect("second page");
    assert_eq!(second.len(), 15, "65 odd jobs: 50 + 15");
    assert_eq!(next, None);
    assert!(first.last().map(|r| r.seq) > second.first().map(|r| r.seq));
    // The next link keeps the filters.
    let url = f.after_url(7);
    assert!(
        url.contains("task=rpmdeplint") && url.contains("submitter=token%3Aci"),
        "{url}"
    );
    assert!(url.ends_with("after=7"), "{url}");
    // An item's page has every job on it.
    let d = Dashboard::new().expect("templates");
    let html = d.item(&jobs, "foo-1.0-0.fc40", "").expect("item");
    assert_eq!(html.matches("<tr><td>").count(), 44, "{html}");
}

#[test]
fn durations_and_times_read_well() {
    assert_eq!(took(850), "850 ms");
    assert_eq!(took(4_200), "4.2 s");
    assert_eq!(took(184_000), "3 min 04 s");
    assert_eq!(took(7_500_000), "2 h 05 min");
    assert_eq!(when(0), "1970-01-01 00:00:00");
}
