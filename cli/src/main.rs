//! minion: the command line.

fn main() {}
