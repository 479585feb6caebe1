//! miniond: the controller daemon.

fn main() {}
