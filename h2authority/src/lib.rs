//! Rewrites the invalid `:authority` (a unix socket's path) that stock gRPC clients send, so a
//! strict HTTP/2 server accepts their calls. See the crate README for what is rewritten and why.

mod encode;
mod rewriter;
mod shape;
mod stream;

pub use rewriter::{RewriteError, Rewriter, LIMITS};
pub use stream::AuthorityFixed;

/// What an invalid `:authority` becomes.
pub const REPLACEMENT: &str = "localhost";
