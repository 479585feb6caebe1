//! The trigger's message parser on arbitrary bodies under every topic it knows (bus messages
//! are anyone's): never a panic; a message that triggers has an item and an item type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minion_trigger::config::Config;
use minion_trigger::message::{decide, BusMessage, Decision};

const TOPICS: [&str; 5] = [
    "org.fedoraproject.prod.buildsys.build.state.change",
    "org.fedoraproject.prod.buildsys.tag",
    "org.fedoraproject.prod.bodhi.update.request.testing",
    "org.fedoraproject.prod.bodhi.update.request.stable",
    "org.fedoraproject.stg.buildsys.tag",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let mut headers = serde_json::Map::new();
    headers.insert("sent-at".into(), "2026-01-01T00:00:00Z".into());
    let msg = BusMessage {
        id: "fuzz".into(),
        topic: TOPICS[pick as usize % TOPICS.len()].into(),
        headers: (pick & 0x80 == 0).then_some(headers),
        body: body.to_vec(),
    };
    if let Decision::Trigger(t) = decide(&msg, &Config::default()) {
        assert!(!t.str("item").is_empty() && !t.str("item_type").is_empty());
    }
});
