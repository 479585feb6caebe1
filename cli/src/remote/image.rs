//! `minion image …`: the daemon's catalog: list; import and remove (admin).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use minion_proto::controller as pb;
use pb::import_image_request::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{client, image_build, json, print_json, render, ClientError, Connection};

/// Bytes per upload request.
const UPLOAD_CHUNK: usize = 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List them, with where each came from and whether it is validated.
    List,
    /// Put a qcow2 or raw disk (e.g. a Fedora Cloud Base image) into the catalog; it is booted
    /// once to the agent's Ready before any pool or instance may use it.
    Import {
        path: PathBuf,
        /// Default: the file's name without its extensions.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "x86_64")]
        arch: String,
        /// How the agent starts in it: `cloud-init` (a stock cloud image: the seed's user-data
        /// starts it) or `systemd`/`init` (the image starts it from the seed itself).
        #[arg(long, default_value = "cloud-init", value_parser = ["cloud-init", "systemd", "init"])]
        agent: String,
    },
    /// Remove an image no pool names and no instance runs on.
    Remove { name: String },
    /// Boot images once to the agent's Ready again and record how that went (e.g. an image that
    /// failed its validation, once mended). Exits 1 if any fails.
    Validate {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Upload IMAGE to `[hosts]` hosts' storage pools through libvirt (what each lacks), then
    /// read it back and check it. Exits 1 if any host fails.
    Push {
        image: String,
        /// Host names (see `minion host list`).
        hosts: Vec<String>,
        /// Every host.
        #[arg(long, conflicts_with = "hosts")]
        all: bool,
    },
    /// Build images from their recipes (minimal, standard, cloud: what `make image` builds) on
    /// this host (as root), showing their stages, then have miniond validate each (one boot to
    /// the agent's Ready).
    Build {
        #[arg(required = true, value_parser = ["minimal", "standard", "cloud", "all"])]
        variants: Vec<String>,
        /// The recipes' directory (default: the installed one, else ./images).
        #[arg(long)]
        recipes: Option<PathBuf>,
        /// Build only; do not ask miniond to validate.
        #[arg(long)]
        no_validate: bool,
    },
}

/// `Fedora-Cloud-Base-40.qcow2` → `Fedora-Cloud-Base-40`.
fn default_name(path: &std::path::Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name = file.as_str();
    for ext in [".xz", ".gz", ".qcow2", ".img", ".raw"] {
        name = name.strip_suffix(ext).unwrap_or(name);
    }
    name.to_string()
}

pub async fn run(conn: &Connection, cmd: ImageCommand) -> Result<i32, ClientError> {
    if let ImageCommand::Build {
        variants,
        recipes,
        no_validate,
    } = cmd
    {
        return build_and_validate(conn, variants, recipes, no_validate).await;
    }
    if let ImageCommand::Validate { names } = cmd {
        return validate(conn, names).await;
    }
    if let ImageCommand::Push { image, hosts, all } = cmd {
        return push(conn, image, hosts, all).await;
    }
    let mut c = client::connect(conn).await?;
    let images = match cmd {
        ImageCommand::List => {
            c.list_images(pb::ListImagesRequest {})
                .await?
                .into_inner()
                .images
        }
        ImageCommand::Import {
            path,
            name,
            arch,
            agent,
        } => {
            let name = name.unwrap_or_else(|| default_name(&path));
            let file = std::fs::File::open(&path)
                .map_err(|e| ClientError::Other(format!("{}: {e}", path.display())))?;
            let size = file
                .metadata()
                .map_err(|e| ClientError::Other(format!("{}: {e}", path.display())))?
                .len();
            let (tx, rx) = mpsc::channel::<pb::ImportImageRequest>(4);
            tx.send(pb::ImportImageRequest {
                kind: Some(Kind::Header(pb::ImportImageHeader {
                    name: name.clone(),
                    arch,
                    agent_start: agent,
                    size,
                })),
            })
            .await
            .map_err(|_| ClientError::Other("upload stream closed".into()))?;
            let progress = std::io::stderr().is_terminal();
            std::thread::spawn(move || upload(file, size, tx, progress));
            let t0 = std::time::Instant::now();
            let image = c.import_image(ReceiverStream::new(rx)).await?.into_inner();
            if !conn.json {
                eprintln!(
                    "{}: imported and validated in {:.1} s: {}",
                    image.name,
                    t0.elapsed().as_secs_f64(),
                    match image.validation.as_str() {
                        "ok" => format!(
                            "ok, the agent was ready {:.1} s after the domain started",
                            image.validated_ready_ms as f64 / 1000.0
                        ),
                        other => format!("{other}: {}", image.validation_reason),
                    }
                );
            }
            let ok = image.validation == "ok";
            let shown = vec![image];
            print_images(conn, &shown);
            return Ok(if ok { 0 } else { 1 });
        }
        // Answered before the connection.
        ImageCommand::Build { .. } | ImageCommand::Validate { .. } | ImageCommand::Push { .. } => {
            return Ok(0)
        }
        ImageCommand::Remove { name } => {
            let r = c
                .remove_image(pb::RemoveImageRequest { name: name.clone() })
                .await?
                .into_inner();
            if conn.json {
                print_json(&serde_json::json!({ "removed": name, "dir": r.removed_dir }));
            } else {
                println!("removed {name} ({})", r.removed_dir);
            }
            return Ok(0);
        }
    };
    print_images(conn, &images);
    Ok(0)
}

/// `image build`: the recipes run here, then miniond validates each image built.
async fn build_and_validate(
    conn: &Connection,
    variants: Vec<String>,
    recipes: Option<PathBuf>,
    no_validate: bool,
) -> Result<i32, ClientError> {
    let dir = image_build::find_recipes(recipes.as_deref())?;
    let (d, v) = (dir.clone(), variants.clone());
    tokio::task::spawn_blocking(move || image_build::build(&d, &v))
        .await
        .map_err(|e| ClientError::Other(format!("build: {e}")))??;
    if no_validate {
        return Ok(0);
    }
    let names: Vec<String> = if variants.iter().any(|v| v == "all") {
        vec!["minimal".into(), "standard".into(), "cloud".into()]
    } else {
        variants
    };
    validate(conn, names).await
}

/// miniond validates each image (one boot to Ready, recorded); 1 if any fails.
async fn validate(conn: &Connection, names: Vec<String>) -> Result<i32, ClientError> {
    let mut c = client::connect(conn).await?;
    let mut shown = Vec::new();
    let mut ok = true;
    for name in names {
        eprintln!("{name}: validating (one boot to the agent's Ready)…");
        let i = c
            .validate_image(pb::ValidateImageRequest { name })
            .await?
            .into_inner();
        ok &= i.validation == "ok";
        shown.push(i);
    }
    print_images(conn, &shown);
    Ok(if ok { 0 } else { 1 })
}

fn print_images(conn: &Connection, images: &[pb::Image]) {
    if conn.json {
        print_json(&serde_json::Value::Array(
            images.iter().map(json::image).collect(),
        ));
    } else {
        println!("{}", render::images_table(images));
    }
}

/// Reads the file in chunks into the request stream (a thread of its own: file reads block),
/// with a progress line on a terminal.
fn upload(
    mut file: std::fs::File,
    size: u64,
    tx: mpsc::Sender<pb::ImportImageRequest>,
    progress: bool,
) {
    let mut buf = vec![0u8; UPLOAD_CHUNK];
    let (mut sent, mut shown) = (0u64, 0u64);
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                eprintln!("\nminion: reading the image: {e}");
                return;
            }
        };
        sent += n as u64;
        let req = pb::ImportImageRequest {
            kind: Some(Kind::Data(buf[..n].to_vec())),
        };
        if tx.blocking_send(req).is_err() {
            return;
        }
        if progress && (sent - shown >= 16 * UPLOAD_CHUNK as u64 || sent == size) {
            shown = sent;
            let pct = (sent * 100).checked_div(size).unwrap_or(100);
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\ruploading: {:>6.1} / {:.1} MiB ({pct:>3}%)",
                sent as f64 / 1048576.0,
                size as f64 / 1048576.0
            );
            let _ = err.flush();
        }
    }
    if progress {
        eprintln!("\nuploaded; validating (the image boots once to the agent's Ready)…");
    }
}

async fn push(
    conn: &Connection,
    image: String,
    hosts: Vec<String>,
    all: bool,
) -> Result<i32, ClientError> {
    let mut c = client::connect(conn).await?;
    let results = c
        .push_image(pb::PushImageRequest {
            image: image.clone(),
            hosts,
            all,
        })
        .await?
        .into_inner()
        .results;
    if conn.json {
        super::print_json(&serde_json::Value::Array(
            results
                .iter()
                .map(|r| serde_json::json!({"host": r.host, "ok": r.ok, "error": r.error, "seconds": r.seconds}))
                .collect(),
        ));
    } else {
        for r in &results {
            if r.ok {
                println!(
                    "{image} on {}: pushed and verified ({:.1} s)",
                    r.host, r.seconds
                );
            } else {
                println!("{image} on {}: FAILED: {}", r.host, r.error);
            }
        }
    }
    Ok(if results.iter().all(|r| r.ok) { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_names_drop_disk_extensions() {
        use std::path::Path;
        assert_eq!(
            super::default_name(Path::new("/x/Fedora-Cloud-Base-40-1.14.x86_64.qcow2")),
            "Fedora-Cloud-Base-40-1.14.x86_64"
        );
        assert_eq!(super::default_name(Path::new("disk.raw")), "disk");
        assert_eq!(super::default_name(Path::new("cloud.img.xz")), "cloud");
    }
}
