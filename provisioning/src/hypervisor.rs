//! The libvirt connection (`virt` crate): create transient domains, destroy them, find ours.
//!
//! **Every method blocks** on a libvirt RPC (≈30 ms warm; the first call after libvirtd starts waits
//! for capability probing, ≈8 s; `destroy` of a running domain ≈1.7 s). Async callers use
//! `tokio::task::spawn_blocking`. A `Hypervisor` is `Send + Sync`: share one per URI behind an `Arc`.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, Once, PoisonError, RwLock};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::stream::Stream;

use crate::{DOMAIN_PREFIX, METADATA_NAMESPACE};

/// A libvirt failure: what we were doing, to what, and libvirt's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervisorError {
    #[error("cannot connect to libvirt at {uri}: {message}")]
    Connect {
        uri: String,
        code: i32,
        message: String,
    },
    #[error("libvirt could not create domain {name}: {message}")]
    Create {
        name: String,
        code: i32,
        message: String,
    },
    #[error("libvirt could not destroy domain {name}: {message}")]
    Destroy {
        name: String,
        code: i32,
        message: String,
    },
    #[error("libvirt {op} failed for {target}: {message}")]
    Call {
        op: &'static str,
        target: String,
        code: i32,
        message: String,
    },
}

impl HypervisorError {
    /// libvirt's message (no code decoration).
    pub fn message(&self) -> &str {
        match self {
            HypervisorError::Connect { message, .. }
            | HypervisorError::Create { message, .. }
            | HypervisorError::Destroy { message, .. }
            | HypervisorError::Call { message, .. } => message,
        }
    }

    /// libvirt's `virErrorNumber`.
    pub fn code(&self) -> i32 {
        match self {
            HypervisorError::Connect { code, .. }
            | HypervisorError::Create { code, .. }
            | HypervisorError::Destroy { code, .. }
            | HypervisorError::Call { code, .. } => *code,
        }
    }
}

/// A domain carrying Minion's `<metadata>` mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedDomain {
    pub name: String,
    pub job_id: String,
    /// The daemon that made it (`owner` attribute of the mark); `None` for marks without one.
    pub owner: Option<String>,
    pub active: bool,
}

/// One libvirt connection.
pub struct Hypervisor {
    /// Replaced when libvirtd went away and came back (see [`Hypervisor::conn`]).
    conn: RwLock<Connect>,
    /// A second connection for destroys and volume deletions, opened at the first one: libvirt's
    /// client holds back the other calls on a connection while a long one runs (a destroy waits
    /// ~200 ms for qemu to die, libvirt's kill poll; a domain's creation as long as qemu's
    /// start), and a VM's teardown overlaps the next VM's provisioning and start.
    teardown: RwLock<Option<Connect>>,
    /// The pump of each domain channel opened through this connection ("DOMAIN/CHANNEL").
    channels: Mutex<HashMap<String, crate::streams::ChannelPump>>,
    uri: String,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

// VIR_DOMAIN_METADATA_ELEMENT: the metadata kind for an element in a custom namespace.
const METADATA_ELEMENT: i32 = 2;
// VIR_DOMAIN_START_PAUSED, VIR_DOMAIN_START_AUTODESTROY.
const START_PAUSED: u32 = 1;
const START_AUTODESTROY: u32 = 2;
// VIR_DOMAIN_CHANNEL_FORCE, VIR_DOMAIN_CONSOLE_FORCE: take the stream over from an earlier
// holder (a previous connection of ours that died).
const CHANNEL_FORCE: u32 = 1;
const CONSOLE_FORCE: u32 = 1;
// VIR_DOMAIN_SAVE_RUNNING: a restored domain runs, whatever state it was saved in.
const SAVE_RUNNING: u32 = 2;

pub(crate) fn code_of(e: &VirtError) -> i32 {
    match e.code() {
        virt::enumutil::Enum::Known(k) => virt::enumutil::RawEnum::to_raw(k) as i32,
        virt::enumutil::Enum::Unknown(u) => u as i32,
    }
}

pub(crate) fn is(e: &VirtError, which: ErrorNumber) -> bool {
    e.code().is(which)
}

impl Hypervisor {
    /// Connects to `uri` (e.g. `qemu:///system`, `qemu+ssh://host/system`, `test:///default`).
    pub fn connect(uri: &str) -> Result<Hypervisor, HypervisorError> {
        static QUIET: Once = Once::new();
        // libvirt's default handler prints every error to stderr, including expected ones
        // (a lookup of a domain that is already gone); ours are returned as values instead.
        QUIET.call_once(virt::error::clear_error_callback);
        let conn = open(uri)?;
        Ok(Hypervisor {
            conn: RwLock::new(conn),
            teardown: RwLock::new(None),
            channels: Mutex::new(HashMap::new()),
            uri: uri.to_string(),
        })
    }

    /// The current connection (a counted reference to it).
    fn current(&self) -> Connect {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The connection, opened again first if it died (libvirtd restarted): a long-lived daemon
    /// should not need restarting because libvirtd was.
    pub(crate) fn conn(&self) -> Result<Connect, HypervisorError> {
        let conn = self.current();
        if conn.is_alive().unwrap_or(false) {
            Ok(conn)
        } else {
            self.reconnect()
        }
    }

    /// The connection for destroys and deletions (see [`Hypervisor`]), opened when there is
    /// none or it died.
    pub(crate) fn teardown_conn(&self) -> Result<Connect, HypervisorError> {
        // Each connection to libvirt's test driver is a world of its own.
        if self.uri.starts_with("test:") {
            return self.conn();
        }
        let current = self
            .teardown
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(c) = current.filter(|c| c.is_alive().unwrap_or(false)) {
            return Ok(c);
        }
        let fresh = open(&self.uri)?;
        *self
            .teardown
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(fresh.clone());
        Ok(fresh)
    }

    fn reconnect(&self) -> Result<Connect, HypervisorError> {
        tracing::warn!(uri = %self.uri, "the libvirt connection is closed; connecting again");
        let fresh = open(&self.uri)?;
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    /// Runs a read-only or idempotent call; when it fails because the connection died under it
    /// (libvirt only notices a dead socket when it uses it), connects again and retries once.
    /// The outer error is a failed reconnect, the inner one the call's own.
    pub(crate) fn retrying<T>(
        &self,
        call: impl Fn(&Connect) -> Result<T, VirtError>,
    ) -> Result<Result<T, VirtError>, HypervisorError> {
        let conn = self.conn()?;
        match call(&conn) {
            Err(_) if !conn.is_alive().unwrap_or(false) => Ok(call(&self.reconnect()?)),
            result => Ok(result),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Creates and starts a transient domain (gone from libvirt once it stops); returns its name.
    pub fn create_transient(&self, xml: &str) -> Result<String, HypervisorError> {
        self.create(xml, 0)
    }

    /// Like [`Hypervisor::create_transient`], and libvirt also destroys the domain when this
    /// connection closes (the process exits or dies): a crashed daemon cannot leak a running VM.
    /// Only for connections that live as long as their VMs.
    pub fn create_transient_autodestroy(&self, xml: &str) -> Result<String, HypervisorError> {
        self.create(xml, START_AUTODESTROY)
    }

    fn create(&self, xml: &str, flags: u32) -> Result<String, HypervisorError> {
        let started = Instant::now();
        let name_in_xml = || xml_name(xml).unwrap_or("(unnamed)").to_string();
        // Not retried on a dead connection: the domain may have been created before it died.
        let dom =
            self.conn()?
                .create_domain_xml(xml, flags)
                .map_err(|e| HypervisorError::Create {
                    name: name_in_xml(),
                    code: code_of(&e),
                    message: e.message().to_string(),
                })?;
        let name = dom
            .name()
            .map_err(|e| self.call_error("virDomainGetName", &name_in_xml(), &e))?;
        tracing::debug!(domain = %name, elapsed_ms = started.elapsed().as_millis() as u64, "domain created");
        Ok(name)
    }

    /// Creates a transient domain with its vCPUs stopped ([`Hypervisor::resume`] starts them),
    /// so its console can be attached before the guest writes a byte; `autodestroy` as in
    /// [`Hypervisor::create_transient_autodestroy`].
    pub fn create_paused(&self, xml: &str, autodestroy: bool) -> Result<String, HypervisorError> {
        self.create(
            xml,
            START_PAUSED | if autodestroy { START_AUTODESTROY } else { 0 },
        )
    }

    /// Starts a paused domain's vCPUs.
    pub fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        let dom = self.existing(name, "virDomainResume")?;
        dom.resume()
            .map_err(|e| self.call_error("virDomainResume", name, &e))
    }

    /// A unix socket to running domain `name`'s virtio channel `channel`: a non-blocking stream
    /// from virDomainOpenChannel (the channel's socket is on the libvirt host, whichever host that
    /// is), pumped by the event loop. A pump of the same channel that still runs (an earlier
    /// session's, its socket just closed) is ended first and its abort waited for: libvirtd 9.0
    /// deadlocks when a channel is opened while that channel's previous stream is being closed
    /// (its event loop, closing the old stream, waits for the chrdev table's lock; the worker
    /// opening the new one holds that lock and waits for the old stream's). Seen here: a kept
    /// job's VM adopted as an instance at once.
    pub fn channel_socket(&self, name: &str, channel: &str) -> Result<UnixStream, HypervisorError> {
        let key = format!("{name}/{channel}");
        let pumps = || self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = {
            let mut p = pumps();
            p.retain(|_, pump| pump.running());
            p.remove(&key)
        };
        if let Some(previous) = previous {
            previous.end();
        }
        let dom = self.existing(name, "virDomainOpenChannel")?;
        let stream = Stream::new(&self.conn()?, crate::streams::NONBLOCK)
            .map_err(|e| self.call_error("virStreamNew", name, &e))?;
        dom.open_channel(Some(channel), &stream, CHANNEL_FORCE)
            .map_err(|e| self.call_error("virDomainOpenChannel", name, &e))?;
        let (sock, pump) = crate::streams::socket_for(stream, name)
            .map_err(|e| self.stream_error("virDomainOpenChannel", name, e.to_string()))?;
        pumps().insert(key, pump);
        Ok(sock)
    }

    /// A non-blocking stream on domain `name`'s serial console (virDomainOpenConsole; a pty console).
    pub fn open_console(&self, name: &str) -> Result<Stream, HypervisorError> {
        let dom = self.existing(name, "virDomainOpenConsole")?;
        let stream = Stream::new(&self.conn()?, crate::streams::NONBLOCK)
            .map_err(|e| self.call_error("virStreamNew", name, &e))?;
        dom.open_console(None, &stream, CONSOLE_FORCE)
            .map_err(|e| self.call_error("virDomainOpenConsole", name, &e))?;
        Ok(stream)
    }

    fn existing(&self, name: &str, op: &'static str) -> Result<Domain, HypervisorError> {
        self.lookup(name)?.ok_or_else(|| HypervisorError::Call {
            op,
            target: name.to_string(),
            code: ErrorNumber::NoDomain as i32,
            message: "no such domain".into(),
        })
    }

    /// Saves running domain `name`'s memory and device state to `path` (libvirt's raw format,
    /// which restores fastest); the domain then stops, and a transient one is gone. `path` is on
    /// the libvirt host.
    pub fn save(&self, name: &str, path: &std::path::Path) -> Result<(), HypervisorError> {
        let started = Instant::now();
        let dom = self.existing(name, "virDomainSaveFlags")?;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            HypervisorError::Call {
                op: "virDomainSaveFlags",
                target: path.display().to_string(),
                code: 0,
                message: "a path with a NUL byte".into(),
            }
        })?;
        // SAFETY: `dom` is a live domain handle, `c_path` a NUL-terminated string that outlives
        // the call; a null dxml means "keep the domain's XML".
        let rc = unsafe {
            virt::sys::virDomainSaveFlags(dom.as_ptr(), c_path.as_ptr(), std::ptr::null(), 0)
        };
        if rc < 0 {
            let e = VirtError::last_error();
            return Err(self.call_error("virDomainSaveFlags", name, &e));
        }
        tracing::debug!(
            domain = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "domain saved"
        );
        Ok(())
    }

    /// Starts the domain saved at `path` (as described by the XML in it: libvirt refuses another
    /// UUID than the saved one, so a VM's own identity is written into its own copy of the image).
    /// It runs at once. `name` is for errors and logs. Like [`Hypervisor::create_transient`], the
    /// domain is gone once it stops. `path` is on the host.
    pub fn restore(&self, path: &std::path::Path, name: &str) -> Result<(), HypervisorError> {
        let started = Instant::now();
        let name = name.to_string();
        let path_str = path.to_str().ok_or_else(|| HypervisorError::Create {
            name: name.clone(),
            code: 0,
            message: format!("{} is not UTF-8", path.display()),
        })?;
        self.conn()?
            .restore_domain_flags(path_str, None, SAVE_RUNNING)
            .map_err(|e| HypervisorError::Create {
                name: name.clone(),
                code: code_of(&e),
                message: e.message().to_string(),
            })?;
        tracing::debug!(domain = %name, elapsed_ms = started.elapsed().as_millis() as u64, "domain restored");
        Ok(())
    }

    /// Pauses the domain: its vCPUs stop at once and it can do nothing more until destroyed.
    /// Gone already, or not running, is success (it cannot run either way).
    /// Through the teardown connection, which carries no streams: on the connection that had
    /// just carried the VM's channel, libvirt 9.0's client twice never returned this call's
    /// lookup (libvirtd had answered; the job's end waited on it).
    pub fn pause(&self, name: &str) -> Result<(), HypervisorError> {
        let dom = match self.teardown_conn()?.lookup_domain_by_name(name) {
            Ok(d) => d,
            Err(e) if is(&e, ErrorNumber::NoDomain) => return Ok(()),
            Err(e) => return Err(self.call_error("virDomainLookupByName", name, &e)),
        };
        match dom.suspend() {
            Ok(()) => Ok(()),
            Err(e) if is(&e, ErrorNumber::NoDomain) || is(&e, ErrorNumber::OperationInvalid) => {
                Ok(())
            }
            Err(e) => Err(self.call_error("virDomainSuspend", name, &e)),
        }
    }

    /// Stops the domain (hard power-off) so that it no longer exists. Already gone, or not running,
    /// is success. Our domains are transient; a persistent one of that name (defined by hand) is
    /// also undefined, so "destroyed" always means "gone from `virsh list --all`".
    pub fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        let dom = match self.teardown_conn()?.lookup_domain_by_name(name) {
            Ok(d) => d,
            Err(e) if is(&e, ErrorNumber::NoDomain) => return Ok(()),
            Err(e) => return Err(self.call_error("virDomainLookupByName", name, &e)),
        };
        let destroy_error = |e: VirtError| HypervisorError::Destroy {
            name: name.to_string(),
            code: code_of(&e),
            message: e.message().to_string(),
        };
        let started = Instant::now();
        match dom.destroy() {
            Ok(()) => {}
            // Vanished or stopped between the lookup and the destroy: the goal is reached.
            Err(e) if is(&e, ErrorNumber::NoDomain) || is(&e, ErrorNumber::OperationInvalid) => {}
            Err(e) => return Err(destroy_error(e)),
        }
        match dom.is_persistent() {
            Ok(true) => match dom.undefine() {
                Ok(()) => {}
                Err(e) if is(&e, ErrorNumber::NoDomain) => {}
                Err(e) => return Err(destroy_error(e)),
            },
            Ok(false) => {}
            Err(e) if is(&e, ErrorNumber::NoDomain) => {}
            Err(e) => return Err(destroy_error(e)),
        }
        tracing::debug!(
            domain = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "domain destroyed"
        );
        Ok(())
    }

    /// Whether the connection still works (libvirtd may have restarted; then connect again).
    pub fn is_alive(&self) -> bool {
        self.current().is_alive().unwrap_or(false)
    }

    /// Whether libvirtd answers now: one cheap call, connecting again if the connection died
    /// (a restarted libvirtd is only noticed when the connection is used).
    pub fn ping(&self) -> Result<(), HypervisorError> {
        self.retrying(|c| c.lib_version())?
            .map(|_| ())
            .map_err(|e| self.call_error("virConnectGetLibVersion", &self.uri, &e))
    }

    /// libvirt's and the hypervisor's (qemu's) versions, as `major * 1_000_000 + minor * 1000 +
    /// release`: a snapshot saved by one qemu is only restored by the same.
    pub fn versions(&self) -> Result<(u32, u32), HypervisorError> {
        self.retrying(|c| Ok((c.lib_version()?, c.hyp_version()?)))?
            .map_err(|e| self.call_error("virConnectGetVersion", &self.uri, &e))
    }

    /// Whether a domain of that name exists and runs; gone = `false`.
    pub fn is_active(&self, name: &str) -> Result<bool, HypervisorError> {
        match self.lookup(name)? {
            None => Ok(false),
            Some(dom) => match dom.is_active() {
                Ok(active) => Ok(active),
                Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(false),
                Err(e) => Err(self.call_error("virDomainIsActive", name, &e)),
            },
        }
    }

    /// Polls until the domain no longer runs (it powered off and libvirt reaped it, ≈1.6 s after the
    /// guest's power-off here). Returns whether it is gone; `false` means the timeout passed.
    pub fn wait_until_inactive(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<bool, HypervisorError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_active(name)? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The job id of a domain's Minion mark; `None` when the domain is gone or unmarked.
    pub fn job_id(&self, name: &str) -> Result<Option<String>, HypervisorError> {
        match self.lookup(name)? {
            None => Ok(None),
            Some(dom) => Ok(self.mark_of(&dom, name)?.map(|(id, _owner)| id)),
        }
    }

    /// Every domain named `minion-…` that carries Minion's `<metadata>` mark, with its job id.
    /// Domains that vanish while being listed are left out; `minion-…` domains without the mark
    /// (someone else's, e.g. a smoke test) are not ours and are left out too.
    pub fn list_marked(&self) -> Result<Vec<MarkedDomain>, HypervisorError> {
        let domains = self
            .retrying(|c| c.list_all_domains(0))?
            .map_err(|e| self.call_error("virConnectListAllDomains", &self.uri, &e))?;
        let mut marked = Vec::new();
        for dom in domains {
            let name = match dom.name() {
                Ok(n) => n,
                Err(e) if is(&e, ErrorNumber::NoDomain) => continue,
                Err(e) => return Err(self.call_error("virDomainGetName", "a listed domain", &e)),
            };
            if !name.starts_with(DOMAIN_PREFIX) {
                continue;
            }
            let Some((job_id, owner)) = self.mark_of(&dom, &name)? else {
                continue;
            };
            let active = match dom.is_active() {
                Ok(a) => a,
                Err(e) if is(&e, ErrorNumber::NoDomain) => continue,
                Err(e) => return Err(self.call_error("virDomainIsActive", &name, &e)),
            };
            marked.push(MarkedDomain {
                name,
                job_id,
                owner,
                active,
            });
        }
        marked.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(marked)
    }

    /// The mark's job id and owner; `None` when the domain carries no (valid) mark.
    fn mark_of(
        &self,
        dom: &Domain,
        name: &str,
    ) -> Result<Option<(String, Option<String>)>, HypervisorError> {
        match dom.metadata(METADATA_ELEMENT, Some(METADATA_NAMESPACE), 0) {
            Ok(xml) => Ok(parse_job_id(&xml).map(|id| (id, parse_attr(&xml, "owner")))),
            Err(e) if is(&e, ErrorNumber::NoDomainMetadata) || is(&e, ErrorNumber::NoDomain) => {
                Ok(None)
            }
            Err(e) => Err(self.call_error("virDomainGetMetadata", name, &e)),
        }
    }

    pub(crate) fn lookup(&self, name: &str) -> Result<Option<Domain>, HypervisorError> {
        match self.retrying(|c| c.lookup_domain_by_name(name))? {
            Ok(d) => Ok(Some(d)),
            Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(self.call_error("virDomainLookupByName", name, &e)),
        }
    }

    pub(crate) fn call_error(
        &self,
        op: &'static str,
        target: &str,
        e: &VirtError,
    ) -> HypervisorError {
        HypervisorError::Call {
            op,
            target: target.to_string(),
            code: code_of(e),
            message: e.message().to_string(),
        }
    }
}

/// A remote host's connection is closed after this many seconds without an answer: libvirt's
/// keepalive pings every [`KEEPALIVE_INTERVAL`] s and gives up after [`KEEPALIVE_COUNT`] unanswered.
/// Every call and stream on it then fails instead of waiting on a dead TCP link.
pub const KEEPALIVE_INTERVAL: i32 = 2;
pub const KEEPALIVE_COUNT: u32 = 3;

/// Whether `uri` reaches libvirtd over a network transport (`qemu+tcp://…`, `qemu+ssh://…`,
/// `qemu://host/…` = TLS) rather than the local socket.
pub fn is_remote(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    let transport = scheme.split_once('+').map(|(_, t)| t);
    match transport {
        Some("unix") => false,
        Some(_) => true,
        None => !rest.starts_with('/'),
    }
}

/// Why `uri`'s transport is refused, if it is. libvirt's own ssh clients (`qemu+libssh://`,
/// `qemu+libssh2://`) crash a client that calls from several threads while streams run: with
/// libvirt 9.0, a minute of concurrent calls and volume uploads on one such connection ends in a
/// segfault in the RPC client's event loop (a watch left on a finished call's stack; the libssh
/// socket's buffered data makes every wait a zero-timeout one), and miniond is such a client.
/// The same load over `qemu+ssh://` (the `ssh` program), TLS or TCP runs clean.
pub fn refused_transport(uri: &str) -> Option<String> {
    let scheme = uri.split_once("://")?.0;
    let transport = scheme.split_once('+')?.1;
    matches!(transport, "libssh" | "libssh2").then(|| {
        format!(
            "the {transport} transport crashes a multi-threaded libvirt client under streams; \
             use qemu+ssh:// (the ssh program), e.g. {}",
            uri.replacen(&format!("+{transport}://"), "+ssh://", 1)
        )
    })
}

/// libvirt's keepalive and non-blocking streams need an event loop in the client: one thread
/// runs libvirt's default loop for the whole process, registered before the first connection.
pub(crate) fn ensure_event_loop() {
    static LOOP: Once = Once::new();
    LOOP.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!("libvirt event loop: {e} (remote hosts get no keepalive)");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::error!("libvirt event loop: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        if let Err(e) = spawned {
            tracing::error!("libvirt event loop thread: {e}");
        }
    });
}

/// Opens a connection; a remote one gets libvirt's keepalive.
fn open(uri: &str) -> Result<Connect, HypervisorError> {
    if let Some(why) = refused_transport(uri) {
        return Err(HypervisorError::Connect {
            uri: uri.to_string(),
            code: 0,
            message: why,
        });
    }
    let remote = is_remote(uri);
    // Before any connection opens: only then is its socket watched by the loop, which the
    // streams of module streams (and keepalive) need.
    ensure_event_loop();
    let conn = Connect::open(Some(uri)).map_err(|e| HypervisorError::Connect {
        uri: uri.to_string(),
        code: code_of(&e),
        message: e.message().to_string(),
    })?;
    if remote {
        if let Err(e) = conn.set_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT) {
            tracing::warn!(%uri, "libvirt keepalive: {e}");
        }
    }
    Ok(conn)
}

/// The `<name>` of a domain XML, for error messages only.
fn xml_name(xml: &str) -> Option<&str> {
    let start = xml.find("<name>")? + "<name>".len();
    let len = xml[start..].find("</name>")?;
    Some(xml[start..start + len].trim())
}

/// The `id` attribute of the mark element libvirt hands back, e.g.
/// `<minion:job xmlns:minion="https://minion.dev/xmlns/1" id="…"/>` (libvirt may re-serialise it
/// with either quote style and its own prefix).
pub fn parse_job_id(xml: &str) -> Option<String> {
    parse_attr(xml, "id")
}

/// The value of attribute `attr` in the mark element (first match, unescaped; empty = `None`).
fn parse_attr(xml: &str, attr: &str) -> Option<String> {
    let key = format!("{attr}=");
    let mut rest = xml;
    while let Some(pos) = rest.find(&key) {
        let before = rest[..pos].chars().last();
        let after = &rest[pos + key.len()..];
        rest = after;
        // `xmlns:minion=` or `uid=` are not `id=`.
        if !matches!(before, Some(c) if c.is_whitespace()) {
            continue;
        }
        let quote = after.chars().next()?;
        if quote != '"' && quote != '\'' {
            continue;
        }
        let value = &after[1..];
        let end = value.find(quote)?;
        let id = unescape_xml(&value[..end]);
        return (!id.is_empty()).then_some(id);
    }
    None
}

fn unescape_xml(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;
    use crate::domain::{render_xml, DomainSpec};

    #[test]
    fn remote_uris_are_told_from_this_machine_s() {
        for local in [
            "qemu:///system",
            "qemu:///session",
            "qemu+unix:///system",
            "test:///default",
        ] {
            assert!(!is_remote(local), "{local}");
        }
        for remote in [
            "qemu+tcp://10.77.1.2/system",
            "qemu+ssh://root@kvm1/system",
            "qemu+tls://kvm1/system",
            "qemu://kvm1/system",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        assert!(!is_remote("not a uri"));
    }

    #[test]
    fn libvirt_s_own_ssh_clients_are_refused_and_the_ssh_program_is_named_instead() {
        for ok in [
            "qemu:///system",
            "qemu+ssh://root@kvm1/system?keyfile=/k&no_tty=1",
            "qemu+tls://kvm1/system",
            "qemu+tcp://10.77.1.2/system",
        ] {
            assert_eq!(refused_transport(ok), None, "{ok}");
        }
        let why = refused_transport("qemu+libssh://root@kvm1/system?keyfile=/k").expect("refused");
        assert!(why.contains("libssh transport crashes"), "{why}");
        assert!(
            why.contains("qemu+ssh://root@kvm1/system?keyfile=/k"),
            "{why}"
        );
        assert!(refused_transport("qemu+libssh2://kvm1/system").is_some());
        let err = Hypervisor::connect("qemu+libssh://root@kvm1/system").expect_err("refused");
        assert!(err.message().contains("use qemu+ssh://"), "{err}");
    }

    #[test]
    fn hypervisor_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Hypervisor>();
        let hv = std::sync::Arc::new(test_driver());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let hv = hv.clone();
                std::thread::spawn(move || hv.is_active("minion-thread-probe").expect("is_active"))
            })
            .collect();
        for t in threads {
            assert!(!t.join().expect("thread"));
        }
    }

    #[test]
    fn job_id_is_read_from_either_quote_style_and_not_from_lookalikes() {
        assert_eq!(
            parse_job_id(r#"<minion:job xmlns:minion="https://minion.dev/xmlns/1" id="abc-1"/>"#)
                .as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            parse_job_id("<m:job uid='x' id='q&amp;r'/>").as_deref(),
            Some("q&r")
        );
        assert_eq!(parse_job_id("<m:job xmlns:id=\"x\"/>"), None);
        assert_eq!(parse_job_id("<m:job id=\"\"/>"), None);
        assert_eq!(parse_job_id("<m:job/>"), None);
        let mark = r#"<minion:job xmlns:minion="https://minion.dev/xmlns/1" id="j1" owner="/srv/a &amp; b"/>"#;
        assert_eq!(parse_attr(mark, "owner").as_deref(), Some("/srv/a & b"));
        assert_eq!(parse_job_id(mark).as_deref(), Some("j1"));
        assert_eq!(parse_attr("<m:job id='j'/>", "owner"), None);
    }

    // libvirt's built-in test driver: a real libvirt (XML parsing, metadata, lifecycle) with no
    // daemon. Its state is per-process and shared, so every test uses its own domain names.
    fn test_driver() -> Hypervisor {
        Hypervisor::connect("test:///default").expect("the test driver is built into libvirt")
    }

    fn spec(job: &str) -> DomainSpec {
        let dir = format!("/var/lib/minion/vms/{job}");
        let mut s = crate::domain::tests::test_spec(
            &dir,
            Accel::Tcg {
                reason: "test".into(),
            },
        );
        s.name = crate::domain_name(job);
        s.job_id = job.to_string();
        s
    }

    #[test]
    fn create_list_destroy_on_the_test_driver() {
        let hv = test_driver();
        let xml = render_xml(&spec("hv-lifecycle-1")).expect("xml");
        let name = hv.create_transient(&xml).expect("created");
        assert_eq!(name, "minion-hv-lifecycle-1");
        assert!(hv.is_active(&name).expect("is_active"));
        assert_eq!(
            hv.job_id(&name).expect("job id").as_deref(),
            Some("hv-lifecycle-1")
        );
        let marked = hv.list_marked().expect("list");
        assert!(
            marked.contains(&MarkedDomain {
                name: name.clone(),
                job_id: "hv-lifecycle-1".into(),
                owner: Some("/var/lib/minion".into()),
                active: true
            }),
            "{marked:?}"
        );
        // The test driver's own domain `test` is neither minion-named nor marked.
        assert!(marked.iter().all(|m| m.name.starts_with(DOMAIN_PREFIX)));

        hv.destroy(&name).expect("destroyed");
        assert!(!hv.is_active(&name).expect("is_active after"));
        hv.destroy(&name).expect("destroying a gone domain is Ok");
        assert!(hv
            .wait_until_inactive(&name, Duration::from_millis(10))
            .expect("wait"));
        assert!(!hv
            .list_marked()
            .expect("list")
            .iter()
            .any(|m| m.name == name));
    }

    #[test]
    fn unmarked_minion_named_domains_are_not_listed() {
        let hv = test_driver();
        let xml = render_xml(&spec("hv-unmarked-1")).expect("xml");
        let start = xml.find("<metadata>").expect("has metadata");
        let end = xml.find("</metadata>").expect("closes") + "</metadata>".len();
        let unmarked = format!("{}{}", &xml[..start], &xml[end..]);
        let name = hv.create_transient(&unmarked).expect("created");
        assert!(!hv
            .list_marked()
            .expect("list")
            .iter()
            .any(|m| m.name == name));
        assert_eq!(hv.job_id(&name).expect("job id"), None);
        hv.destroy(&name).expect("destroy");
    }

    #[test]
    fn destroy_also_undefines_a_persistent_domain_of_that_name() {
        let hv = test_driver();
        let xml = render_xml(&spec("hv-persistent-1")).expect("xml");
        let dom = hv.current().define_domain_xml(&xml).expect("defined");
        dom.create().expect("started");
        let name = "minion-hv-persistent-1";
        let state = |hv: &Hypervisor| {
            hv.list_marked()
                .expect("list")
                .into_iter()
                .find(|m| m.name == name)
                .map(|m| m.active)
        };
        assert_eq!(state(&hv), Some(true));
        hv.destroy(name).expect("destroy");
        assert!(
            hv.lookup(name).expect("lookup").is_none(),
            "still defined after destroy"
        );
        // Defined but never started: destroy undefines it too.
        hv.current().define_domain_xml(&xml).expect("defined again");
        assert_eq!(state(&hv), Some(false));
        hv.destroy(name).expect("destroy inactive");
        assert!(hv.lookup(name).expect("lookup").is_none());
        assert!(hv.is_alive());
    }

    #[test]
    fn errors_carry_libvirt_messages() {
        let err = Hypervisor::connect("nosuchdriver:///x").expect_err("bad uri");
        assert!(matches!(err, HypervisorError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("nosuchdriver:///x"), "{err}");
        assert!(!err.message().is_empty());

        let hv = test_driver();
        let err = hv
            .create_transient("<domain type='test'><name>minion-bad</name>")
            .expect_err("bad xml");
        let HypervisorError::Create { name, message, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(name, "minion-bad");
        assert!(!message.is_empty());

        let xml = render_xml(&spec("hv-dup-1")).expect("xml");
        let name = hv.create_transient(&xml).expect("first");
        let err = hv.create_transient(&xml).expect_err("same name twice");
        assert!(err.to_string().contains("minion-hv-dup-1"), "{err}");
        assert!(
            err.message().contains("minion-hv-dup-1") || err.message().contains("already"),
            "{err}"
        );
        hv.destroy(&name).expect("destroy");
        assert!(!hv
            .is_active("minion-never-existed")
            .expect("gone is inactive"));
        hv.destroy("minion-never-existed")
            .expect("destroying what never existed is Ok");
    }
}
