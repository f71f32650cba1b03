//! Content-addressed cache keys for build steps, following BuildKit's rules:
//!
//! `key(step) = sha256(canonical JSON { version, parent key, the step after expansion,
//! content digests of its inputs })`
//!
//! - The parent key is the previous *layer-producing* step of the stage (metadata steps only
//!   change the config, so an `ENV` does not invalidate a later `COPY`; a `RUN` sees env
//!   through its own fields).
//! - A stage's first parent is its base: `scratch` + platform, an image's manifest digest
//!   (never its tag), or the final key of an earlier stage.
//! - Context files count by content and mode, never by mtime; `COPY --from` counts the source
//!   stage's key or image digest.

use serde::Serialize;

use super::dispatch::{Base, CopyFrom, CopySource, Op, OpKind};
use crate::cache::image::to_canonical_json;
use crate::cache::Digest;

const VERSION: u32 = 1;

#[derive(Serialize)]
struct KeyDoc<'a> {
    v: u32,
    parent: &'a str,
    step: StepRepr<'a>,
    inputs: &'a [String],
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum StepRepr<'a> {
    Copy {
        add: bool,
        from: String,
        sources: Vec<String>,
        dest: &'a str,
        chown: &'a Option<String>,
        chmod: &'a Option<String>,
        link: bool,
        parents: bool,
        excludes: &'a [String],
        unpack: Option<bool>,
        checksum: &'a Option<String>,
    },
    Mkdir {
        path: &'a str,
        user: &'a Option<String>,
    },
    Run {
        args: &'a [String],
        env: &'a [String],
        user: &'a Option<String>,
        workdir: &'a str,
        mounts: &'a [String],
        network: &'a str,
        security: &'a str,
    },
}

/// The key a stage's first step builds on.
pub fn base_key(
    base: &Base,
    platform: &str,
    stage_keys: &dyn Fn(usize) -> Option<Digest>,
) -> Option<Digest> {
    match base {
        Base::Scratch => Some(Digest::of(format!("scratch {platform}").as_bytes())),
        Base::Image(img) => Some(Digest::of(
            format!("image {}", img.manifest_digest).as_bytes(),
        )),
        Base::Stage(i) => stage_keys(*i),
    }
}

/// How a COPY source tree is named in a key.
pub fn copy_from_repr(from: &CopyFrom, stage_keys: &dyn Fn(usize) -> Option<Digest>) -> String {
    match from {
        CopyFrom::Context => "context".into(),
        CopyFrom::Stage(i) => format!(
            "stage {}",
            stage_keys(*i).map(|d| d.to_string()).unwrap_or_default()
        ),
        CopyFrom::Image(img) => format!("image {}", img.manifest_digest),
    }
}

/// The cache key of a layer-producing step, or `None` for metadata steps.
/// `inputs` are content digests the step reads (context files, downloaded content, ...).
pub fn step_key(
    parent: &Digest,
    op: &Op,
    from_repr: Option<&str>,
    inputs: &[String],
) -> Option<Digest> {
    let step = match &op.kind {
        OpKind::Metadata => return None,
        OpKind::Mkdir { path, user } => StepRepr::Mkdir { path, user },
        OpKind::Copy(c) => StepRepr::Copy {
            add: c.is_add,
            from: from_repr.unwrap_or("context").to_string(),
            sources: c
                .sources
                .iter()
                .map(|s| match s {
                    CopySource::Path(p) => format!("path {p}"),
                    CopySource::Url(u) => format!("url {u}"),
                    CopySource::Inline(name, content) => {
                        format!("inline {name} {}", Digest::of(content.as_bytes()))
                    }
                })
                .collect(),
            dest: &c.dest,
            chown: &c.chown,
            chmod: &c.chmod,
            link: c.link,
            parents: c.parents,
            excludes: &c.excludes,
            unpack: c.unpack,
            checksum: &c.checksum,
        },
        OpKind::Run {
            args,
            env,
            user,
            workdir,
            mounts,
            network,
            security,
            ..
        } => StepRepr::Run {
            args,
            env,
            user,
            workdir,
            mounts,
            network,
            security,
        },
    };
    let doc = KeyDoc {
        v: VERSION,
        parent: parent.as_str(),
        step,
        inputs,
    };
    Some(Digest::of(&to_canonical_json(&doc)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::dispatch::CopyOp;
    use crate::parser::Span;

    fn copy(dest: &str) -> Op {
        Op {
            span: Span::default(),
            created_by: "COPY".into(),
            kind: OpKind::Copy(CopyOp {
                from: CopyFrom::Context,
                sources: vec![CopySource::Path("a".into())],
                dest: dest.into(),
                chown: None,
                chmod: None,
                link: false,
                parents: false,
                excludes: vec![],
                unpack: None,
                checksum: None,
                keep_git_dir: false,
                is_add: false,
            }),
        }
    }

    #[test]
    fn keys_depend_on_parent_step_and_inputs_only() {
        let p = Digest::of(b"parent");
        let a = step_key(&p, &copy("/x"), None, &["f1".into()]).unwrap();
        assert_eq!(a, step_key(&p, &copy("/x"), None, &["f1".into()]).unwrap());
        assert_ne!(a, step_key(&p, &copy("/y"), None, &["f1".into()]).unwrap());
        assert_ne!(a, step_key(&p, &copy("/x"), None, &["f2".into()]).unwrap());
        assert_ne!(
            a,
            step_key(&Digest::of(b"other"), &copy("/x"), None, &["f1".into()]).unwrap()
        );
        let meta = Op {
            span: Span::default(),
            created_by: "ENV".into(),
            kind: OpKind::Metadata,
        };
        assert!(step_key(&p, &meta, None, &[]).is_none());
    }
}
