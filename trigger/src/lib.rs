//! minion-trigger: turns bus messages into jobs, as taskotron-trigger did.
//!
//! ```text
//! bus message (topic, headers, JSON body) --message::decide--> JobTrigger dict | ignored | malformed
//! dict --rules::Rules::matching--> the rules whose `when` holds
//!      --plan::plan--> one job per (task, item, arch), however many rules match
//! ```
//!
//! Everything here is pure (no broker, no daemon): `minion-trigger check` and `dry-run` use it as
//! the consumer does.

pub mod config;
pub mod consume;
pub mod discover;
pub mod message;
pub mod metrics;
pub mod plan;
pub mod publish;
pub mod rules;
