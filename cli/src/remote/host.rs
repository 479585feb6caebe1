//! `minion host list | drain | undrain`: the `[hosts]` libvirt hosts pools run VMs on.

use clap::Subcommand;
use minion_proto::controller as pb;

use super::{client, json, print_json, render, ClientError, Connection};

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// List them: up, down or draining, VMs, the images each holds, the last error.
    List,
    /// Give HOST no new VM (its running VMs finish).
    Drain { name: String },
    /// Give HOST VMs again.
    Undrain { name: String },
}

pub async fn run(conn: &Connection, cmd: HostCommand) -> Result<i32, ClientError> {
    let mut c = client::connect(conn).await?;
    let hosts = match cmd {
        HostCommand::List => {
            c.list_hosts(pb::ListHostsRequest {})
                .await?
                .into_inner()
                .hosts
        }
        HostCommand::Drain { name } => vec![c
            .drain_host(pb::DrainHostRequest { name, drain: true })
            .await?
            .into_inner()],
        HostCommand::Undrain { name } => vec![c
            .drain_host(pb::DrainHostRequest { name, drain: false })
            .await?
            .into_inner()],
    };
    if conn.json {
        print_json(&serde_json::Value::Array(
            hosts.iter().map(json::host).collect(),
        ));
    } else {
        println!("{}", render::hosts_table(&hosts));
    }
    Ok(0)
}
