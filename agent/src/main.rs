//! The in-guest agent.

fn main() {}
