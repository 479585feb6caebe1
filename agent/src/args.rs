//! Command line of the agent. Hand-parsed: four flags do not justify a parser in the guest binary.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Where the agent's channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Find the virtio-serial port by name (the normal case, inside a VM).
    VirtioPort { name: String },
    /// A character device or file path given explicitly.
    Device(PathBuf),
    /// Connect to a unix socket (tests and benchmarks outside a VM).
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub endpoint: Endpoint,
    /// Scratch space for the job: task tree, workdir, results.
    pub workdir: PathBuf,
    /// Power the machine off when done (the default inside a VM).
    pub poweroff: bool,
}

pub const PORT_NAME: &str = "org.minion.agent.0";

const USAGE: &str = "usage: minion-agent [--port NAME | --device PATH | --connect SOCKET] [--workdir DIR] [--no-poweroff]";

impl Args {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Self> {
        let mut out = Args {
            endpoint: Endpoint::VirtioPort {
                name: PORT_NAME.to_owned(),
            },
            workdir: PathBuf::from("/var/tmp/minion"),
            poweroff: true,
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &str| {
                it.next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "--port" => {
                    out.endpoint = Endpoint::VirtioPort {
                        name: value("--port")?,
                    }
                }
                "--device" => out.endpoint = Endpoint::Device(value("--device")?.into()),
                "--connect" => out.endpoint = Endpoint::Unix(value("--connect")?.into()),
                "--workdir" => out.workdir = value("--workdir")?.into(),
                "--no-poweroff" => out.poweroff = false,
                "--version" | "-V" => bail!("minion-agent {}", env!("CARGO_PKG_VERSION")),
                "--help" | "-h" => bail!("{USAGE}"),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args> {
        Args::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_to_the_virtio_port_and_poweroff() {
        let a = parse(&[]).expect("parse");
        assert_eq!(
            a.endpoint,
            Endpoint::VirtioPort {
                name: PORT_NAME.into()
            }
        );
        assert!(a.poweroff);
    }

    #[test]
    fn flags() {
        let a = parse(&["--connect", "/tmp/s", "--workdir", "/w", "--no-poweroff"]).expect("parse");
        assert_eq!(a.endpoint, Endpoint::Unix("/tmp/s".into()));
        assert_eq!(a.workdir, PathBuf::from("/w"));
        assert!(!a.poweroff);
    }

    #[test]
    fn errors_name_the_flag() {
        let e = parse(&["--workdir"]).expect_err("missing value");
        assert!(e.to_string().contains("--workdir needs a value"), "{e}");
        let e = parse(&["--bogus"]).expect_err("unknown");
        assert!(e.to_string().contains("--bogus"), "{e}");
    }
}
