//! Who is calling and what they may do. On the unix socket the kernel says who the peer is
//! (SO_PEERCRED); on TCP a bearer token from the tokens file does. Three roles, each including
//! the one before: `read` (list, show, logs, artifacts), `submit` (+ submit, cancel own jobs),
//! `admin` (+ cancel any job, pools, images). Health and reflection need no identity.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Submit,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        })
    }
}

/// An authenticated caller. `id` is what a job records as its submitter: `uid:N` on the
/// socket, `token:NAME` on TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: token {index} (`{name}`): {field}: {message}")]
    Invalid {
        path: PathBuf,
        index: usize,
        name: String,
        field: &'static str,
        message: String,
    },
    #[error("socket_admins: `{0}`: no such user")]
    NoSuchUser(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    /// Hex SHA-256 of the token: the file holds no secret (`minion token new` prints both).
    sha256: String,
}

/// The bearer tokens miniond accepts on TCP, by the SHA-256 of the token.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Caller>,
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Tokens::parse(path, &text)
    }

    /// `[[token]]` tables of `name`, `role`, `sha256`; names and hashes unique.
    pub fn parse(path: &Path, text: &str) -> Result<Tokens, AccessError> {
        let file: TokensFile = toml::from_str(text).map_err(|e| AccessError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut tokens = Tokens::default();
        let mut names = HashSet::new();
        for (i, t) in file.token.into_iter().enumerate() {
            let invalid = |field, message: &str| AccessError::Invalid {
                path: path.to_path_buf(),
                index: i + 1,
                name: t.name.clone(),
                field,
                message: message.to_string(),
            };
            let name_ok = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
            if !name_ok {
                return Err(invalid(
                    "name",
                    "1–64 characters of letters, digits, `.`, `_`, `-`, `@`",
                ));
            }
            if !names.insert(t.name.clone()) {
                return Err(invalid("name", "a second token with this name"));
            }
            let hash = parse_hex32(&t.sha256).ok_or_else(|| {
                invalid("sha256", "not 64 hex digits (`minion token new` makes one)")
            })?;
            let caller = Caller {
                id: format!("token:{}", t.name),
                role: t.role,
            };
            if tokens.by_hash.insert(hash, caller).is_some() {
                return Err(invalid("sha256", "the same token as an earlier entry"));
            }
        }
        Ok(tokens)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn check(&self, token: &str) -> Option<&Caller> {
        self.by_hash.get(&token_hash(token))
    }
}

/// Socket callers that are admin besides root, from `socket_admins` (user names or uids).
pub fn socket_admins(names: &[String]) -> Result<HashSet<u32>, AccessError> {
    names
        .iter()
        .map(|n| match n.parse::<u32>() {
            Ok(uid) => Ok(uid),
            Err(_) => uid_of(n).ok_or_else(|| AccessError::NoSuchUser(n.clone())),
        })
        .collect()
}

fn uid_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid C string; the result is read at once, before any other call that
    // could reuse getpwnam's static buffer.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        (!pw.is_null()).then(|| (*pw).pw_uid)
    }
}

/// The interceptor in front of the controller: finds the caller, or refuses the call.
#[derive(Clone)]
pub enum Gate {
    /// Root and `admins` are admin; any other peer (only root and the socket group's members
    /// can connect: the socket's mode) submits.
    Socket {
        admins: Arc<HashSet<u32>>,
    },
    Tokens(Arc<Tokens>),
}

impl Gate {
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        match self {
            Gate::Socket { admins } => {
                let cred = req
                    .extensions()
                    .get::<tonic::transport::server::UdsConnectInfo>()
                    .and_then(|i| i.peer_cred)
                    .ok_or_else(|| {
                        Status::unauthenticated("the socket did not say who the peer is")
                    })?;
                let uid = cred.uid();
                let role = if uid == 0 || admins.contains(&uid) {
                    Role::Admin
                } else {
                    Role::Submit
                };
                Ok(Caller {
                    id: format!("uid:{uid}"),
                    role,
                })
            }
            Gate::Tokens(tokens) => {
                let peer = req
                    .remote_addr()
                    .map_or_else(|| "?".to_string(), |a| a.to_string());
                let refuse = |why: &str| {
                    tracing::warn!(%peer, "refused a call: {why}");
                    Status::unauthenticated(why.to_string())
                };
                let header = req.metadata().get("authorization").ok_or_else(|| {
                    refuse("no token: send `authorization: Bearer TOKEN` (minion: $MINION_TOKEN or --token-file)")
                })?;
                let value = header
                    .to_str()
                    .map_err(|_| refuse("the authorization header is not text"))?;
                let token = value
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim())
                    .ok_or_else(|| refuse("the authorization header is not `Bearer TOKEN`"))?;
                tokens
                    .check(token)
                    .cloned()
                    .ok_or_else(|| refuse("the token is not known to this miniond"))
            }
        }
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.caller(&req)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The caller of `req`, if their role reaches `need`; `what` names the action for the refusal.
pub fn require<T>(req: &Request<T>, need: Role, what: &str) -> Result<Caller, Status> {
    let c = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("the controller was served without its access gate"))?;
    if c.role < need {
        return Err(refused(&c, need, what));
    }
    Ok(c)
}

/// A PERMISSION_DENIED naming who, what, and the role it needs; logged.
pub fn refused(c: &Caller, need: Role, what: &str) -> Status {
    tracing::warn!(caller = %c.id, role = %c.role, "refused: {what} (needs role {need})");
    Status::permission_denied(format!(
        "{} (role {}) may not {what}: that needs role {need}",
        c.id, c.role
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // "test"

    #[test]
    fn tokens_file_round_trip_and_refusals_name_the_entry() {
        let p = Path::new("/etc/minion/tokens.toml");
        let t = Tokens::parse(
            p,
            &format!("[[token]]\nname = \"ci-bot\"\nrole = \"submit\"\nsha256 = \"{HASH}\"\n"),
        )
        .expect("parses");
        assert_eq!(
            t.check("test"),
            Some(&Caller {
                id: "token:ci-bot".into(),
                role: Role::Submit
            })
        );
        assert_eq!(t.check("tesT"), None);

        for (text, want) in [
            (format!("[[token]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"{HASH}\"\n"), "role"),
            ("[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"abc\"\n".into(), "token 1 (`a`): sha256"),
            (format!("[[token]]\nname = \"a b\"\nrole = \"read\"\nsha256 = \"{HASH}\"\n"), "name"),
            (
                format!("[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"{HASH}\"\n[[token]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"{}\"\n", "0".repeat(64)),
                "token 2 (`a`): name: a second",
            ),
            (
                format!("[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"{HASH}\"\n[[token]]\nname = \"b\"\nrole = \"admin\"\nsha256 = \"{HASH}\"\n"),
                "token 2 (`b`): sha256: the same token",
            ),
            ("[[token]]\nname = \"a\"\nrole = \"read\"\nsha256 = \"x\"\ncolour = 1\n".into(), "colour"),
        ] {
            let e = Tokens::parse(p, &text).expect_err(want).to_string();
            assert!(e.starts_with("/etc/minion/tokens.toml: "), "{e}");
            assert!(e.contains(want), "{e:?} should name {want}");
        }
    }

    #[test]
    fn roles_are_ordered_and_refusals_say_what_is_needed() {
        assert!(Role::Read < Role::Submit && Role::Submit < Role::Admin);
        let mut req = Request::new(());
        req.extensions_mut().insert(Caller {
            id: "token:viewer".into(),
            role: Role::Read,
        });
        assert!(require(&req, Role::Read, "list jobs").is_ok());
        let e = require(&req, Role::Submit, "submit jobs").expect_err("read may not submit");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "token:viewer (role read) may not submit jobs: that needs role submit"
        );
        let bare = Request::new(());
        assert_eq!(
            require(&bare, Role::Read, "x").expect_err("no gate").code(),
            tonic::Code::Internal
        );
    }

    #[test]
    fn the_token_gate_refuses_missing_malformed_and_unknown_tokens() {
        let tokens = Tokens::parse(
            Path::new("t"),
            &format!("[[token]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{HASH}\"\n"),
        )
        .expect("parses");
        let mut gate = Gate::Tokens(Arc::new(tokens));
        let with = |v: Option<&str>| {
            let mut r = Request::new(());
            if let Some(v) = v {
                r.metadata_mut()
                    .insert("authorization", v.parse().expect("ascii"));
            }
            r
        };
        use tonic::service::Interceptor;
        for (v, want) in [
            (None, "no token"),
            (Some("Basic dGVzdA=="), "not `Bearer TOKEN`"),
            (Some("Bearer nope"), "not known"),
        ] {
            let e = gate.call(with(v)).expect_err(want);
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(e.message().contains(want), "{}", e.message());
        }
        let ok = gate.call(with(Some("bearer test"))).expect("known token");
        assert_eq!(
            ok.extensions().get::<Caller>().map(|c| c.role),
            Some(Role::Admin)
        );
    }

    #[test]
    fn socket_admins_take_names_and_uids() {
        let set = socket_admins(&["root".into(), "1234".into()]).expect("known");
        assert_eq!(set, HashSet::from([0, 1234]));
        assert!(matches!(
            socket_admins(&["no-such-user-here".into()]),
            Err(AccessError::NoSuchUser(_))
        ));
    }
}
