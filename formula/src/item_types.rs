//! The kinds of item a task checks. One list for every entry point (`minion runtask -t`,
//! `SubmitJob`, the trigger), as the original runner's `-t` choices.

/// Item types the original runner accepted, sorted.
pub const ITEM_TYPES: &[&str] = &[
    "bodhi_update",
    "compose",
    "dist_git_commit",
    "docker_image",
    "git_commit",
    "koji_build",
    "koji_tag",
    "module_build",
    "pull_request",
];

/// Whether `t` is one of [`ITEM_TYPES`].
pub fn is_item_type(t: &str) -> bool {
    ITEM_TYPES.contains(&t)
}

/// An item type in words, as the original's TAP wrote it (`koji_build` → `Koji build`); an
/// unknown type is written as it is.
pub fn item_type_words(item_type: &str) -> &str {
    match item_type {
        "koji_build" => "Koji build",
        "koji_tag" => "Koji tag",
        "bodhi_update" => "Bodhi update",
        "yum_repository" => "Yum repository",
        "compose" => "Compose",
        "docker_image" => "Docker image",
        "dist_git_commit" => "Dist-git commit",
        "git_commit" => "Git commit",
        "module_build" => "Module build",
        "pull_request" => "Pull request",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_type_has_words_and_the_list_is_sorted() {
        let mut sorted = ITEM_TYPES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, ITEM_TYPES);
        for t in ITEM_TYPES {
            assert_ne!(item_type_words(t), *t, "{t}");
        }
        assert!(is_item_type("git_commit") && is_item_type("module_build"));
        assert!(!is_item_type("koji-build"));
    }
}
