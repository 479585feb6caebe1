//! `trigger_rules.yml` on arbitrary text (a config an admin edits by hand): never a panic, every
//! refusal names the file, and rules that load evaluate against a message without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minion_trigger::message::JobTrigger;
use minion_trigger::rules::Rules;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Rules::parse(std::path::Path::new("trigger_rules.yml"), text, None) {
        Err(e) => assert!(e.to_string().contains("trigger_rules.yml"), "{e}"),
        Ok(rules) => {
            let mut fields = serde_json::Map::new();
            for (k, v) in [
                ("message_type", "KojiBuildPackageCompleted"),
                ("item", "foo-1.0-1.fc40"),
                ("item_type", "koji_build"),
                ("name", "foo"),
                ("distgit_branch", "f40"),
            ] {
                fields.insert(k.into(), v.into());
            }
            let _ = rules.matching(&JobTrigger { fields });
        }
    }
});
