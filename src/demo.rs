//! `rainmaker demo`: the whole product on one machine in a few seconds. It writes a small
//! sample trading-platform folder, starts a real target agent on a loopback port (TLS, token,
//! pinned certificate), mirrors the folder, then simulates a trading session (ticks
//! appended, a workspace edited, a template deleted) and mirrors again to show that only
//! the change crosses.

use crate::cli::DemoArgs;
use crate::progress::size;
use anyhow::{Context, Result};
use rainmaker_engine::engine::{self, PushOptions, ServeOptions, Server, TargetSpec};
use rainmaker_engine::event::{self, PushReport};
use rainmaker_engine::transport::Trust;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Bytes of one tick record: time (ns), price, volume, flags.
const RECORD: usize = 24;

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let _temp;
    let base = match args.dir {
        Some(dir) => dir,
        None => {
            _temp = tempfile_dir()?;
            _temp.0.clone()
        }
    };
    let source = base.join("NinjaTrader 8");
    let target = base.join("backup-server");
    std::fs::create_dir_all(&target)?;
    let mut rng = StdRng::seed_from_u64(8);
    println!(
        "1. Writing a sample platform folder in {}",
        source.display()
    );
    write_sample(&source, &mut rng)?;

    let token = format!("{:032x}", rng.random::<u128>());
    let server = Server::bind(ServeOptions {
        admin_token: None,
        subscribe_token: None,
        subscribe: None,
        root: target.clone(),
        listen: "127.0.0.1:0".into(),
        token: token.clone(),
        insecure: false,
        name: "demo-backup".into(),
        trash_retention: Some(rainmaker_engine::trash::DEFAULT_RETENTION),
        push_to: None,
    })
    .await
    .context("cannot start the demo target")?;
    let url = format!("wss://{}", server.local_addr());
    let fingerprint = server.fingerprint().unwrap_or_default().to_string();
    println!("2. Started a target agent on {url}\n   certificate {fingerprint}");
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(server.run(cancel.clone()));

    let backup = TargetSpec {
        url: url.clone(),
        // The demo started this agent itself, so it pins the fingerprint it printed.
        trust: Trust::Pinned(fingerprint.clone()),
        token,
        dialed_in: None,
    };
    let mut options = PushOptions::new(source.clone(), vec![backup], base.join("source-index"));
    options.source_name = "demo-pc".into();
    options.max_delete_share = None;
    println!("3. First mirror (everything crosses):");
    let first = push(&options).await?;
    println!(
        "4. A trading session: ticks appended to every file, one workspace edited, one template deleted"
    );
    simulate_session(&source, &mut rng)?;
    println!("5. Second mirror (only the change crosses):");
    let second = push(&options).await?;
    cancel.cancel();
    let _ = serving.await;
    let ok = first.ok && second.ok;
    println!(
        "\n{} The backup in {} is identical to the source (verified by the target, file by file).",
        if ok { "Done." } else { "FAILED." },
        target.display()
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir> {
    let dir = std::env::temp_dir().join(format!("rainmaker-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}

async fn push(options: &PushOptions) -> Result<PushReport> {
    let (events, _listener) = event::channel();
    let report = engine::push_once(options, &events, &CancellationToken::new()).await?;
    for t in &report.targets {
        match &t.error {
            None => println!(
                "   {} files written, {} changed, {} on the wire, {:.2} s",
                t.files_sent,
                size(t.bytes_changed),
                size(t.wire_bytes),
                t.seconds
            ),
            Some(e) => println!("   FAILED: {e}"),
        }
    }
    Ok(report)
}

fn ticks(rng: &mut StdRng, count: usize, start_ns: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * RECORD);
    let mut t = start_ns;
    let mut price = 6000.0f64;
    for _ in 0..count {
        t += rng.random_range(1_000..5_000_000);
        price += f64::from(rng.random_range(-2i32..=2)) * 0.25;
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&price.to_le_bytes());
        out.extend_from_slice(&rng.random_range(1u32..50).to_le_bytes());
        out.extend_from_slice(&rng.random::<u32>().to_le_bytes());
    }
    out
}

fn write_sample(root: &Path, rng: &mut StdRng) -> Result<()> {
    for (i, instrument) in ["ES 12-26", "NQ 12-26", "CL 01-27"].iter().enumerate() {
        let dir = root.join("db/tick").join(instrument);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("20261126.Last.ncd"),
            ticks(rng, 80_000 + i * 10_000, 1 << 60),
        )?;
    }
    for i in 0..20 {
        let dir = root.join("workspaces");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("Workspace {i}.xml")),
            format!(
                "<NinjaTrader><Workspace id=\"{i}\"><Chart instrument=\"ES 12-26\" period=\"{}\"/></Workspace></NinjaTrader>\n",
                rng.random_range(1..60)
            ),
        )?;
    }
    let templates = root.join("templates/Chart");
    std::fs::create_dir_all(&templates)?;
    for name in ["Default", "Scalping", "Swing"] {
        std::fs::write(
            templates.join(format!("{name}.xml")),
            format!("<Template name=\"{name}\"/>\n"),
        )?;
    }
    std::fs::create_dir_all(root.join("db/replay"))?;
    Ok(())
}

fn simulate_session(root: &Path, rng: &mut StdRng) -> Result<()> {
    for instrument in ["ES 12-26", "NQ 12-26", "CL 01-27"] {
        let path = root
            .join("db/tick")
            .join(instrument)
            .join("20261126.Last.ncd");
        let mut file = std::fs::OpenOptions::new().append(true).open(&path)?;
        file.write_all(&ticks(rng, 500, 2 << 60))?;
    }
    std::fs::write(
        root.join("workspaces/Workspace 3.xml"),
        "<NinjaTrader><Workspace id=\"3\"><Chart instrument=\"NQ 12-26\" period=\"5\"/></Workspace></NinjaTrader>\n",
    )?;
    std::fs::remove_file(root.join("templates/Chart/Swing.xml"))?;
    Ok(())
}
