//! The libvirt domain XML of one disposable VM, rendered from `templates/domain.xml.j2`.
//!
//! Shape (images/README.md, "Domain XML that works", says why each piece is there): direct kernel boot when the
//! image has a kernel; `vda` = the qcow2 overlay, `vdb` = the seed (raw, read-only); serial console
//! to a file; the virtio-serial agent channel; virtio-rng (without it `getrandom` stalls for seconds
//! under TCG); no NIC unless asked; power-off/reboot/crash all end the domain; and a `<metadata>`
//! mark in Minion's namespace carrying the job id, which is how reconciliation finds our domains.

use std::path::{Path, PathBuf};

use minijinja::context;

use crate::accel::Accel;
use crate::error::ProvisionError;
use crate::image::Image;
use crate::templates;

/// The virtio-serial port name the agent opens in the guest.
pub const AGENT_CHANNEL: &str = "org.minion.agent.0";

/// qemu's machine type, as images/smoke-boot.sh measures it (q35, every device on the root bus).
pub const MACHINE: &str = "q35";

/// Longest unix socket path (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// `minion-<job id>` (see [`crate::domain_name`]).
    pub name: String,
    pub job_id: String,
    /// Which daemon made the domain (its state directory, see [`crate::vm::owner_of`]): reconcile
    /// only ever destroys its own daemon's domains, so two daemons can share one libvirtd.
    pub owner: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    pub image: Image,
    /// The overlay and the seed, as paths on the libvirt host.
    pub overlay: PathBuf,
    pub seed: PathBuf,
    /// Direct kernel boot's files on the libvirt host (the image's own, or their volumes').
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The serial console written to this file by virtlogd; `None`: a pty, read through
    /// libvirt's console stream.
    pub console_log: Option<PathBuf>,
    /// The agent channel's unix socket; `None`: a path libvirt picks on its host, reached only
    /// through virDomainOpenChannel.
    pub channel_socket: Option<PathBuf>,
    /// A virtio NIC; `None` (the default for jobs) means no NIC at all.
    pub network: Option<Nic>,
}

/// What a VM's one NIC is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// qemu's user networking: NAT out only (nothing outside can connect in), no host setup.
    User,
    /// A libvirt network by name (e.g. `default`, which needs its dnsmasq).
    Network(String),
}

/// Renders the domain XML for `spec`, validating every value that goes into it.
pub fn render_xml(spec: &DomainSpec) -> Result<String, ProvisionError> {
    check_token("name", &spec.name, 200)?;
    check_token("job_id", &spec.job_id, 128)?;
    let (nic_user, nic_network) = match &spec.network {
        None => (false, None),
        Some(Nic::User) => (true, None),
        Some(Nic::Network(net)) => {
            check_token("network", net, 200)?;
            (false, Some(net.as_str()))
        }
    };
    if !(1..=256).contains(&spec.vcpus) {
        return Err(ProvisionError::invalid(
            "vcpus",
            format!("{} (expected 1-256)", spec.vcpus),
        ));
    }
    if !(64..=4 * 1024 * 1024).contains(&spec.memory_mib) {
        return Err(ProvisionError::invalid(
            "memory_mib",
            format!("{} (expected 64-4194304)", spec.memory_mib),
        ));
    }
    let overlay = abs_utf8("overlay", &spec.overlay)?;
    let seed = abs_utf8("seed", &spec.seed)?;
    let console_log = spec
        .console_log
        .as_deref()
        .map(|p| abs_utf8("console_log", p))
        .transpose()?;
    let channel_socket = spec
        .channel_socket
        .as_deref()
        .map(|p| abs_utf8("channel_socket", p))
        .transpose()?;
    if let Some(sock) = &channel_socket {
        if sock.len() > MAX_SOCKET_PATH {
            return Err(ProvisionError::invalid(
                "channel_socket",
                format!(
                    "{sock} is {} bytes; unix sockets allow {MAX_SOCKET_PATH}",
                    sock.len()
                ),
            ));
        }
    }
    let kernel = spec
        .kernel
        .as_deref()
        .map(|k| abs_utf8("image kernel", k))
        .transpose()?;
    let initrd = spec
        .initrd
        .as_deref()
        .map(|i| abs_utf8("image initrd", i))
        .transpose()?;
    // The CPU model: real KVM passes the host CPU through; TCG keeps qemu's default (qemu64), which
    // every x86_64 guest kernel boots and which costs TCG the least to emulate.
    let cpu_mode = match spec.accel {
        Accel::Kvm => Some("host-passthrough"),
        Accel::Tcg { .. } => None,
    };
    templates::render(
        templates::DOMAIN_XML,
        context! {
            domain_type => spec.accel.domain_type(),
            name => &spec.name,
            job_id => &spec.job_id,
            owner => &spec.owner,
            namespace => crate::METADATA_NAMESPACE,
            memory_mib => spec.memory_mib,
            vcpus => spec.vcpus,
            machine => MACHINE,
            kernel => kernel,
            initrd => initrd,
            cmdline => &spec.image.manifest.cmdline,
            cpu_mode => cpu_mode,
            overlay => overlay,
            seed => seed,
            console_log => console_log,
            channel_socket => channel_socket,
            channel_name => AGENT_CHANNEL,
            nic_user => nic_user,
            network => nic_network,
        },
    )
}

/// Whether `value` is a plain name: 1–200 of `[A-Za-z0-9._-]`, not starting with `-` or `.`.
pub fn is_token(value: &str) -> bool {
    check_token("name", value, 200).is_ok()
}

/// Names and ids: `[A-Za-z0-9._-]`, so they are safe as libvirt names, file names, in logs, and
/// unquoted in the seed's YAML.
pub(crate) fn check_token(field: &str, value: &str, max: usize) -> Result<(), ProvisionError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && !value.starts_with(['-', '.'])
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::invalid(
            field,
            format!("`{value}` (use 1-{max} of [A-Za-z0-9._-])"),
        ))
    }
}

/// libvirt resolves relative paths against its own working directory, and XML carries text.
fn abs_utf8(field: &str, path: &Path) -> Result<String, ProvisionError> {
    if !path.is_absolute() {
        return Err(ProvisionError::invalid(
            field,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| ProvisionError::invalid(field, format!("{} is not UTF-8", path.display())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::{AgentStart, DiskFormat, Manifest};

    pub(crate) fn test_image(kernel: Option<&str>, initrd: Option<&str>) -> Image {
        Image {
            dir: PathBuf::from("/var/cache/minion/images/minimal-0539"),
            manifest: Manifest {
                name: "minimal".into(),
                arch: "x86_64".into(),
                format: DiskFormat::Qcow2,
                disk: "disk.qcow2".into(),
                virtual_size: None,
                file_size: None,
                sha256: None,
                kernel: kernel.map(PathBuf::from),
                initrd: initrd.map(PathBuf::from),
                cmdline: "console=ttyS0 root=/dev/vda init=/usr/sbin/minion-init".into(),
                recipe_hash: None,
                built_at: None,
                agent_start: AgentStart::Init,
            },
        }
    }

    pub(crate) fn test_spec(dir: &str, accel: Accel) -> DomainSpec {
        DomainSpec {
            name: "minion-0b9c0c3e".into(),
            job_id: "0b9c0c3e".into(),
            owner: "/var/lib/minion".into(),
            vcpus: 2,
            memory_mib: 512,
            accel,
            image: test_image(Some("vmlinux"), None),
            overlay: PathBuf::from(format!("{dir}/overlay.qcow2")),
            seed: PathBuf::from(format!("{dir}/seed.iso")),
            kernel: test_image(Some("vmlinux"), None).kernel_path(),
            initrd: None,
            console_log: Some(PathBuf::from(format!("{dir}/console.log"))),
            channel_socket: Some(PathBuf::from(format!("{dir}/channel.sock"))),
            network: None,
        }
    }

    fn tcg() -> Accel {
        Accel::Tcg {
            reason: "test".into(),
        }
    }

    /// Parses the XML with python3's expat (a real XML parser) and prints selected values, so the
    /// escaping is checked by a parser rather than by string matching.
    fn xml_query(xml: &str, script: &str) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .args(["-c", &format!("import sys, xml.etree.ElementTree as ET\nroot = ET.fromstring(sys.stdin.read())\n{script}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(xml.as_bytes())
            .expect("write xml");
        let out = child.wait_with_output().expect("python3 finishes");
        assert!(
            out.status.success(),
            "XML did not parse: {}\n{xml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    #[test]
    fn tcg_direct_boot_domain_has_every_required_piece() {
        let xml = render_xml(&test_spec("/var/lib/minion/vms/0b9c0c3e", tcg())).expect("renders");
        for needle in [
            "<domain type='qemu'>",
            "<name>minion-0b9c0c3e</name>",
            r#"<minion:job xmlns:minion="https://minion.dev/xmlns/1" id="0b9c0c3e" owner="/var/lib/minion"/>"#,
            "<memory unit='MiB'>512</memory>",
            "<vcpu placement='static'>2</vcpu>",
            "<kernel>/var/cache/minion/images/minimal-0539/vmlinux</kernel>",
            "<cmdline>console=ttyS0 root=/dev/vda init=/usr/sbin/minion-init</cmdline>",
            "<acpi/>",
            "<on_poweroff>destroy</on_poweroff>",
            "<driver name='qemu' type='qcow2' cache='unsafe' discard='unmap'/>",
            "<source file='/var/lib/minion/vms/0b9c0c3e/overlay.qcow2'/>",
            "<target dev='vda' bus='virtio'/>",
            "<source file='/var/lib/minion/vms/0b9c0c3e/seed.iso'/>",
            "<target dev='vdb' bus='virtio'/>",
            "<readonly/>",
            "<source path='/var/lib/minion/vms/0b9c0c3e/console.log' append='off'/>",
            "<source mode='bind' path='/var/lib/minion/vms/0b9c0c3e/channel.sock'/>",
            "<target type='virtio' name='org.minion.agent.0'/>",
            "<rng model='virtio'>",
            "<type arch='x86_64' machine='q35'>hvm</type>",
            "<controller type='virtio-serial' index='0'>",
            "slot='0x02'",
            "<controller type='usb' model='none'/>",
            "<memballoon model='none'/>",
        ] {
            assert!(xml.contains(needle), "missing {needle} in\n{xml}");
        }
        for absent in [
            "<interface",
            "<initrd>",
            "<cpu",
            "<boot dev",
            "{{",
            "{%",
            "\n\n",
        ] {
            assert!(!xml.contains(absent), "unexpected {absent:?} in\n{xml}");
        }
        let q = xml_query(
            &xml,
            "ns = {'m': 'https://minion.dev/xmlns/1'}\nprint(root.get('type'), root.find('metadata/m:job', ns).get('id'), len(root.findall('devices/disk')))",
        );
        assert_eq!(q.trim(), "qemu 0b9c0c3e 2");
    }

    #[test]
    fn kvm_domain_uses_kvm_and_passes_the_host_cpu_through() {
        let mut spec = test_spec("/v", Accel::Kvm);
        spec.image = test_image(Some("vmlinuz"), Some("initrd.img"));
        spec.kernel = spec.image.kernel_path();
        spec.initrd = spec.image.initrd_path();
        let xml = render_xml(&spec).expect("renders");
        assert!(xml.contains("<domain type='kvm'>"), "{xml}");
        assert!(
            xml.contains("<cpu mode='host-passthrough' check='none' migratable='off'/>"),
            "{xml}"
        );
        assert!(
            xml.contains("<initrd>/var/cache/minion/images/minimal-0539/initrd.img</initrd>"),
            "{xml}"
        );
    }

    #[test]
    fn image_without_kernel_boots_from_disk_and_network_only_when_asked() {
        let mut spec = test_spec("/v", tcg());
        spec.image = test_image(None, None);
        spec.kernel = None;
        assert!(!render_xml(&spec).expect("renders").contains("<interface"));
        spec.network = Some(Nic::Network("default".into()));
        let xml = render_xml(&spec).expect("renders");
        assert!(xml.contains("<boot dev='hd'/>"), "{xml}");
        assert!(
            !xml.contains("<kernel>") && !xml.contains("<cmdline>"),
            "{xml}"
        );
        assert!(xml.contains("<source network='default'/>"), "{xml}");
        spec.network = Some(Nic::User);
        let xml = render_xml(&spec).expect("renders");
        assert!(xml.contains("<interface type='user'>"), "{xml}");
        assert!(!xml.contains("<source network="), "{xml}");
    }

    #[test]
    fn a_remote_vm_has_a_pty_console_and_a_channel_libvirt_places() {
        let mut spec = test_spec("/v", tcg());
        spec.console_log = None;
        spec.channel_socket = None;
        spec.kernel = Some("/srv/pool/minion-image-ab.kernel".into());
        let xml = render_xml(&spec).expect("renders");
        assert!(xml.contains("<serial type='pty'>"), "{xml}");
        assert!(!xml.contains("console.log"), "{xml}");
        assert!(xml.contains("<source mode='bind'/>"), "{xml}");
        assert!(
            xml.contains("<kernel>/srv/pool/minion-image-ab.kernel</kernel>"),
            "{xml}"
        );
    }

    #[test]
    fn every_interpolated_value_is_escaped() {
        let dir = r#"/tmp/it's <a> "dir" & more"#;
        let mut spec = test_spec(dir, tcg());
        spec.image.manifest.cmdline = r#"console=ttyS0 x="</cmdline><evil/>" y='&'"#.into();
        spec.image.dir = PathBuf::from("/img/a'b");
        spec.kernel = spec.image.kernel_path();
        let xml = render_xml(&spec).expect("renders");
        assert!(!xml.contains("<evil/>"), "{xml}");
        assert!(
            xml.contains("it&apos;s &lt;a&gt; &quot;dir&quot; &amp; more"),
            "{xml}"
        );
        let q = xml_query(
            &xml,
            "print(root.find('devices/disk/source').get('file'))\nprint(root.find('os/cmdline').text)\nprint(root.find('os/kernel').text)\nprint(root.find('devices/channel/source').get('path'))",
        );
        let lines: Vec<_> = q.lines().collect();
        assert_eq!(lines[0], format!("{dir}/overlay.qcow2"));
        assert_eq!(lines[1], spec.image.manifest.cmdline);
        assert_eq!(lines[2], "/img/a'b/vmlinux");
        assert_eq!(lines[3], format!("{dir}/channel.sock"));
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        type Mutation = Box<dyn Fn(&mut DomainSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|s| s.name = "minion-x</name>".into())),
            ("job_id", Box::new(|s| s.job_id = "a b".into())),
            ("job_id", Box::new(|s| s.job_id = String::new())),
            (
                "network",
                Box::new(|s| s.network = Some(Nic::Network("x'y".into()))),
            ),
            ("vcpus", Box::new(|s| s.vcpus = 0)),
            ("memory_mib", Box::new(|s| s.memory_mib = 16)),
            ("overlay", Box::new(|s| s.overlay = "relative.qcow2".into())),
            (
                "channel_socket",
                Box::new(|s| {
                    s.channel_socket = Some(PathBuf::from(format!("/{}/c.sock", "d".repeat(120))))
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut spec = test_spec("/v", tcg());
            mutate(&mut spec);
            let err = render_xml(&spec).expect_err(field);
            assert!(
                err.to_string().starts_with(&format!("invalid {field}:")),
                "{field}: {err}"
            );
        }
    }
}
