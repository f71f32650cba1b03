//! `kiln check [-f Dockerfile] [CONTEXT]`: lint without building.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::{parse_key_value, Outcome};
use crate::graph::{BuildOptions, Platform};
use crate::lint::{self, render};
use crate::parser::SourceLines;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile; `-` reads standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Set build-time variables, as for a build (ARG values affect variable checks).
    #[arg(long = "build-arg", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub build_args: Vec<(String, Option<String>)>,

    /// Target platform (os/arch[/variant]); defaults to this machine's.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,

    /// The build context directory.
    #[arg(value_name = "CONTEXT", default_value = ".")]
    pub context: PathBuf,
}

fn dockerfile_path(args: &CheckArgs) -> PathBuf {
    match &args.file {
        Some(f) => f.clone(),
        None => args.context.join("Dockerfile"),
    }
}

fn read_dockerfile(path: &Path) -> anyhow::Result<String> {
    let bytes = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the Dockerfile from standard input")?;
        buf
    } else {
        std::fs::read(path).with_context(|| format!("cannot read Dockerfile {}", path.display()))?
    };
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: the Dockerfile is not valid UTF-8 (first bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

pub fn run(args: &CheckArgs, root: &Path) -> anyhow::Result<Outcome> {
    if !args.context.is_dir() && args.file.is_none() {
        anyhow::bail!(
            "unable to prepare context: path {:?} not found",
            args.context.display().to_string()
        );
    }
    let path = dockerfile_path(args);
    let text = read_dockerfile(&path)?;
    let mut opts = BuildOptions::default();
    if let Some(p) = &args.platform {
        opts.target_platform = Platform::parse(p)?;
    }
    for (k, v) in &args.build_args {
        if let Some(v) = v {
            opts.build_args.insert(k.clone(), v.clone());
        }
    }
    // Base images in the local store tell their ENV (never create a store just to look).
    let store = if root.join("refs.json").exists() {
        crate::cache::store::ImageStore::open(root).ok()
    } else {
        None
    };
    let images = store.as_ref().map(super::engine::LocalImages);
    let report = lint::check_with_images(
        &text,
        &opts,
        images
            .as_ref()
            .map(|i| i as &dyn crate::graph::dispatch::ImageSource),
    );
    let src = SourceLines::new(&text);
    let name = if path == Path::new("-") {
        "Dockerfile".to_string()
    } else {
        path.display().to_string()
    };
    let out = match args.format {
        Format::Text => render::text(&report, &name, &src),
        Format::Json => render::json(&report, &name, &src) + "\n",
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(if report.errors() > 0 {
        Outcome::Problems
    } else {
        Outcome::Success
    })
}
