//! Which accelerator the domains use: KVM when `/dev/kvm` is a real (VT-x/AMD-V) KVM, TCG otherwise.
//!
//! "/dev/kvm opens" is not enough: on our Firecracker-hosted machines `/dev/kvm` is PVM
//! (pagetable-based virtualisation, no vmx/svm in the CPU flags) and stock guest kernels either
//! abort or crawl under it, while TCG boots them in seconds. So KVM needs both a usable device and
//! vmx/svm in `/proc/cpuinfo`.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::str::FromStr;

/// The environment variable that overrides detection: `kvm`, `tcg` or `auto`.
pub const ACCEL_ENV: &str = "MINION_ACCEL";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg { reason: String },
}

impl Accel {
    /// libvirt's `<domain type=…>`: `kvm`, or `qemu` for TCG.
    pub fn domain_type(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg { .. } => "qemu",
        }
    }

    pub fn is_kvm(&self) -> bool {
        matches!(self, Accel::Kvm)
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accel::Kvm => f.write_str("KVM"),
            Accel::Tcg { reason } => write!(f, "TCG ({reason})"),
        }
    }
}

/// What the operator asked for (daemon config key or `MINION_ACCEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelPreference {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelPreference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(AccelPreference::Auto),
            "kvm" => Ok(AccelPreference::Kvm),
            "tcg" | "qemu" => Ok(AccelPreference::Tcg),
            other => Err(format!(
                "unknown accelerator `{other}` (expected auto, kvm or tcg)"
            )),
        }
    }
}

/// What the host offers, gathered once; separate from the decision so the decision is testable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// `Ok` when `/dev/kvm` opens read-write; otherwise why not.
    pub kvm_device: Result<(), String>,
    /// `vmx` or `svm` among the CPU flags.
    pub cpu_has_virt: bool,
    /// The PVM module is loaded (`/sys/module/kvm_pvm`): explains a vmx/svm-less `/dev/kvm`.
    pub pvm: bool,
}

impl HostProbe {
    /// Probes this host.
    pub fn probe() -> HostProbe {
        let kvm_device = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|e| format!("/dev/kvm is not usable: {e}"));
        let cpu_has_virt = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| cpuinfo_has_virt(&s))
            .unwrap_or(false);
        HostProbe {
            kvm_device,
            cpu_has_virt,
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
        }
    }
}

/// True when some `flags` line of `/proc/cpuinfo` lists `vmx` (Intel) or `svm` (AMD).
pub fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The automatic decision for a probed host.
pub fn decide(probe: &HostProbe) -> Accel {
    if let Err(why) = &probe.kvm_device {
        return Accel::Tcg {
            reason: why.clone(),
        };
    }
    if !probe.cpu_has_virt {
        let what = if probe.pvm {
            "/dev/kvm is PVM"
        } else {
            "/dev/kvm works"
        };
        return Accel::Tcg {
            reason: format!(
                "{what} but the CPU flags have no vmx/svm: stock guest kernels crawl or abort under it"
            ),
        };
    }
    Accel::Kvm
}

/// Detects the accelerator, honouring `MINION_ACCEL` (an unknown value is logged and ignored).
/// Logs one line saying which and why.
pub fn detect() -> Accel {
    let preference = match std::env::var(ACCEL_ENV) {
        Ok(v) => match v.parse::<AccelPreference>() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("{ACCEL_ENV}: {e}; detecting automatically");
                AccelPreference::Auto
            }
        },
        Err(_) => AccelPreference::Auto,
    };
    detect_with(preference)
}

/// Detects with an explicit preference (the daemon's config), which wins over `MINION_ACCEL`.
/// A forced `Kvm` is obeyed even when the probe disagrees (with a warning): the operator knows.
pub fn detect_with(preference: AccelPreference) -> Accel {
    let (accel, level, line) = choose(preference, &HostProbe::probe());
    if level == tracing::Level::WARN {
        tracing::warn!("{line}");
    } else {
        tracing::info!("{line}");
    }
    accel
}

/// The decision for `preference` on a probed host, with the one log line that explains it.
fn choose(preference: AccelPreference, probe: &HostProbe) -> (Accel, tracing::Level, String) {
    let auto = decide(probe);
    match preference {
        AccelPreference::Auto => {
            let line = match &auto {
                Accel::Kvm => format!(
                    "accelerator: KVM (/dev/kvm usable and the CPU has vmx/svm); override with {ACCEL_ENV}=tcg"
                ),
                Accel::Tcg { reason } => {
                    format!("accelerator: TCG, because {reason}; override with {ACCEL_ENV}=kvm")
                }
            };
            (auto, tracing::Level::INFO, line)
        }
        AccelPreference::Kvm => match &auto {
            Accel::Kvm => (
                Accel::Kvm,
                tracing::Level::INFO,
                "accelerator: KVM (forced by configuration)".to_string(),
            ),
            Accel::Tcg { reason } => (
                Accel::Kvm,
                tracing::Level::WARN,
                format!("accelerator: KVM (forced by configuration) although {reason}"),
            ),
        },
        AccelPreference::Tcg => (
            Accel::Tcg {
                reason: "forced by configuration".to_string(),
            },
            tracing::Level::INFO,
            "accelerator: TCG (forced by configuration)".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx sse2\n";
    const PVM_HOST: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor sse2\n";

    #[test]
    fn cpu_flags_are_read_from_the_flags_line_only() {
        assert!(cpuinfo_has_virt(INTEL));
        assert!(cpuinfo_has_virt("flags : svm lm\n"));
        assert!(!cpuinfo_has_virt(PVM_HOST));
        // "vmx" elsewhere (model name, a longer flag) is not the flag.
        assert!(!cpuinfo_has_virt("model name : vmx box\nflags : vmxfoo\n"));
    }

    #[test]
    fn pvm_device_without_vmx_gives_tcg_with_the_reason() {
        let probe = HostProbe {
            kvm_device: Ok(()),
            cpu_has_virt: false,
            pvm: true,
        };
        match decide(&probe) {
            Accel::Tcg { reason } => {
                assert!(reason.contains("PVM"), "{reason}");
                assert!(reason.contains("vmx/svm"), "{reason}");
            }
            Accel::Kvm => panic!("PVM must not be treated as KVM"),
        }
    }

    #[test]
    fn missing_device_gives_tcg_naming_the_device() {
        let probe = HostProbe {
            kvm_device: Err("/dev/kvm is not usable: No such file or directory".into()),
            cpu_has_virt: true,
            pvm: false,
        };
        let Accel::Tcg { reason } = decide(&probe) else {
            panic!("no /dev/kvm → TCG")
        };
        assert!(reason.contains("/dev/kvm"), "{reason}");
    }

    #[test]
    fn real_kvm_gives_kvm() {
        let probe = HostProbe {
            kvm_device: Ok(()),
            cpu_has_virt: true,
            pvm: false,
        };
        assert_eq!(decide(&probe), Accel::Kvm);
        assert_eq!(Accel::Kvm.domain_type(), "kvm");
        assert_eq!(
            Accel::Tcg {
                reason: String::new()
            }
            .domain_type(),
            "qemu"
        );
    }

    #[test]
    fn preferences_parse_and_reject_garbage() {
        assert_eq!("KVM".parse::<AccelPreference>(), Ok(AccelPreference::Kvm));
        assert_eq!(" tcg ".parse::<AccelPreference>(), Ok(AccelPreference::Tcg));
        assert_eq!("auto".parse::<AccelPreference>(), Ok(AccelPreference::Auto));
        let err = "xen"
            .parse::<AccelPreference>()
            .expect_err("xen is not an accelerator");
        assert!(err.contains("xen"), "{err}");
    }

    #[test]
    fn forced_preferences_win() {
        assert_eq!(detect_with(AccelPreference::Kvm), Accel::Kvm);
        assert!(matches!(
            detect_with(AccelPreference::Tcg),
            Accel::Tcg { .. }
        ));
    }

    #[test]
    fn each_decision_comes_with_one_line_saying_which_and_why() {
        let pvm = HostProbe {
            kvm_device: Ok(()),
            cpu_has_virt: false,
            pvm: true,
        };
        let (accel, level, line) = choose(AccelPreference::Auto, &pvm);
        let Accel::Tcg { reason } = accel else {
            panic!("PVM host must get TCG")
        };
        assert_eq!(level, tracing::Level::INFO);
        assert!(line.starts_with("accelerator: TCG, because "), "{line}");
        assert!(
            line.contains(&reason) && line.contains("MINION_ACCEL=kvm"),
            "{line}"
        );

        let real = HostProbe {
            kvm_device: Ok(()),
            cpu_has_virt: true,
            pvm: false,
        };
        let (accel, _, line) = choose(AccelPreference::Auto, &real);
        assert_eq!(accel, Accel::Kvm);
        assert!(
            line.starts_with("accelerator: KVM (") && line.contains("MINION_ACCEL=tcg"),
            "{line}"
        );

        let (accel, level, line) = choose(AccelPreference::Kvm, &pvm);
        assert_eq!(accel, Accel::Kvm);
        assert_eq!(
            level,
            tracing::Level::WARN,
            "forcing KVM where it cannot work warns"
        );
        assert!(line.contains("forced by configuration) although"), "{line}");

        let (_, level, line) = choose(AccelPreference::Tcg, &real);
        assert_eq!(level, tracing::Level::INFO);
        assert_eq!(line, "accelerator: TCG (forced by configuration)");
    }

    #[test]
    fn this_machine_is_detected_as_tcg_when_it_has_pvm() {
        // Only meaningful on our PVM machines; on real hardware the probe legitimately says KVM.
        let probe = HostProbe::probe();
        if probe.pvm && !probe.cpu_has_virt {
            assert!(matches!(
                detect_with(AccelPreference::Auto),
                Accel::Tcg { .. }
            ));
        }
    }
}
