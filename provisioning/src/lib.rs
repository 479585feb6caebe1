//! Overlays, cloud-init seeds, libvirt domains: create, destroy, reap.
//!
//! The crate knows nothing of jobs beyond an id string. Every function here blocks (process spawns,
//! file I/O, libvirt calls): async callers run them in `tokio::task::spawn_blocking`.
//!
//! One VM's life, as the daemon drives it:
//! [`accel::detect`] once at start-up → [`image::load`] → [`vmfiles::VmFiles::create`] →
//! [`overlay::create`] → [`seed::write`] → [`domain::render_xml`] →
//! [`hypervisor::Hypervisor::create_transient`] → … → [`hypervisor::Hypervisor::destroy`] →
//! [`vmfiles::VmFiles::remove_all`].

pub mod accel;
pub mod backend;
pub mod command;
pub mod domain;
pub mod error;
pub mod hostimage;
pub mod hypervisor;
pub mod image;
pub mod import;
pub mod iso9660;
pub mod overlay;
pub mod saveimage;
pub mod seed;
pub mod streams;
mod templates;
pub mod vm;
pub mod vmfiles;
pub mod volumes;

pub use accel::Accel;
pub use domain::{DomainSpec, Nic};
pub use error::ProvisionError;
pub use hypervisor::{Hypervisor, HypervisorError, MarkedDomain};
pub use image::{Image, Manifest};
pub use seed::SeedSpec;
pub use vmfiles::VmFiles;

/// Every domain Minion creates is named `minion-<job id>`.
pub const DOMAIN_PREFIX: &str = "minion-";

/// The XML namespace of the `<metadata>` mark that tells Minion's domains from everyone else's.
pub const METADATA_NAMESPACE: &str = "https://minion.dev/xmlns/1";

/// The domain name for a job: `minion-<job id>`.
pub fn domain_name(job_id: &str) -> String {
    format!("{DOMAIN_PREFIX}{job_id}")
}
