//! `kiln save` and `kiln load`: image archives docker, podman and skopeo understand.

use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::build::CompressionArg;
use super::engine::Engine;
use super::Outcome;
use crate::cache::export::{self, LayerCompression};
use crate::graph::Platform;
use crate::reference::Reference;

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Layer compression in the archive (default: keep compressed layers, gzip the others).
    #[arg(long, value_enum)]
    pub compression: Option<CompressionArg>,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN.
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Suppress the load output.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn save(args: &SaveArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let compression = args
        .compression
        .map(CompressionArg::layer)
        .unwrap_or(LayerCompression::Keep);
    let mut images = Vec::new();
    for name in &args.images {
        let img = engine.store.lookup(name)?;
        // Name the image as the user did when that was a tag; all its tags when it was an ID.
        let tags = match Reference::parse(name) {
            Ok(r)
                if r.digest.is_none()
                    && engine
                        .store
                        .tags_of(&img.manifest_digest)?
                        .contains(&r.clone().with_default_tag().to_string()) =>
            {
                vec![r.with_default_tag().to_string()]
            }
            _ => engine.store.tags_of(&img.manifest_digest)?,
        };
        let exported =
            export::prepare_for_export(&engine.store, &img.manifest_digest, compression)?;
        images.push((tags, exported));
    }
    match &args.output {
        Some(path) => {
            let tmp = path.with_extension("kiln-partial");
            let file = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut w = BufWriter::new(file);
            export::write_docker_archive(&engine.store, &images, &mut w)?;
            w.flush()?;
            w.get_ref().sync_all()?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            if std::io::stdout().is_terminal() {
                bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
            }
            let mut w = BufWriter::new(std::io::stdout().lock());
            export::write_docker_archive(&engine.store, &images, &mut w)?;
            w.flush()?;
        }
    }
    Ok(Outcome::Success)
}

pub fn load(args: &LoadArgs, engine: &Engine) -> anyhow::Result<Outcome> {
    let input: Box<dyn Read> = match &args.input {
        Some(p) => Box::new(BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("requested load from stdin, but stdin is empty");
            }
            Box::new(BufReader::new(std::io::stdin()))
        }
    };
    let loaded = crate::cache::import::load_archive(&engine.store, input, &Platform::host())?;
    if loaded.is_empty() {
        bail!("the archive holds no image for {}", Platform::host());
    }
    if !args.quiet {
        let mut out = std::io::stdout().lock();
        for img in &loaded {
            if img.tags.is_empty() {
                writeln!(out, "Loaded image ID: {}", img.id)?;
            }
            for t in &img.tags {
                let r = Reference::parse(t).ok();
                let shown = r
                    .map(|r| {
                        format!(
                            "{}:{}",
                            r.familiar_repository(),
                            r.tag.unwrap_or_else(|| "latest".into())
                        )
                    })
                    .unwrap_or_else(|| t.clone());
                writeln!(out, "Loaded image: {shown}")?;
            }
        }
    }
    Ok(Outcome::Success)
}
