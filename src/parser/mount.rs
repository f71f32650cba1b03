//! `RUN --mount=...` options: a CSV list of `key=value` fields that describe a bind, cache,
//! tmpfs, secret or ssh mount. Parsed statically when the Dockerfile is read (so typos are
//! reported by `kiln check`), and again with variable expansion when the build dispatches.

use serde::Serialize;

use super::directives::parse_go_bool;

/// The kinds of RUN mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    #[default]
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    pub const ALL: [&'static str; 5] = ["bind", "cache", "tmpfs", "secret", "ssh"];

    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// One `--mount`, with every option BuildKit accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    pub target: Option<String>,
    pub source: Option<String>,
    pub from: Option<String>,
    pub readonly: bool,
    pub id: Option<String>,
    pub sharing: Option<Sharing>,
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs size limit in bytes.
    pub size: Option<u64>,
    /// secret exposed as an environment variable instead of a file.
    pub env: Option<String>,
}

/// Expands variables in one option value (the graph layer passes the stage's scope).
pub type Expander<'a> = &'a dyn Fn(&str) -> Result<String, String>;

const ALL_KEYS: [&str; 18] = [
    "type",
    "from",
    "source",
    "src",
    "target",
    "dst",
    "destination",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "id",
    "sharing",
    "required",
    "mode",
    "uid",
    "gid",
    "size",
];

/// Parses one `--mount` value. `expand` is applied to every value first; when it is `None`
/// (static checking) values holding a `$` are accepted unchecked, to be checked after expansion.
/// Errors are plain messages; the caller attaches the location.
pub fn parse_mount(value: &str, expand: Option<Expander>) -> Result<Mount, String> {
    let fields = split_csv(value)?;
    let mut m = Mount::default();
    let mut ro_auto = true;
    // The type decides which keys are valid, so read it first wherever it is written.
    for field in &fields {
        if let Some((key, val)) = field.split_once('=') {
            if key.eq_ignore_ascii_case("type") {
                let val = expanded(val, expand)?;
                let Some(val) = val else { continue };
                m.kind = match val.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => {
                        return Err(format!(
                            "unsupported mount type {val:?}{}",
                            did_you_mean(&val, &MountType::ALL)
                        ))
                    }
                };
            }
        }
    }
    for field in &fields {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(val) = val else {
            match key.as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.kind, MountType::Secret | MountType::Ssh) => {
                    m.required = true
                }
                "required" => return Err(unexpected_for_type(&key, m.kind)),
                _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
            }
            continue;
        };
        if key == "from" && has_variable(val) {
            return Err(
                "'from' doesn't support variable expansion, define alias stage instead".into(),
            );
        }
        let Some(val) = expanded(val, expand)? else {
            // Static check of a value with a variable: keep the raw text where any string
            // will do, and leave typed values to be checked after expansion.
            let raw = Some(val.to_string());
            match key.as_str() {
                "source" | "src" => m.source = raw,
                "target" | "dst" | "destination" => m.target = raw,
                "id" => m.id = raw,
                "env" => m.env = raw,
                _ => {}
            }
            continue;
        };
        let bool_value = |v: &str| parse_go_bool(v).ok_or(format!("invalid value for {key}: {v}"));
        let u32_value = |v: &str, radix: u32| {
            u32::from_str_radix(v, radix).map_err(|_| format!("invalid value {v} for {key}"))
        };
        match key.as_str() {
            "type" => {}
            "from" => m.from = Some(val),
            "source" | "src" => m.source = Some(val),
            "target" | "dst" | "destination" => m.target = Some(val),
            "readonly" | "ro" => {
                m.readonly = bool_value(&val)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !bool_value(&val)?;
                ro_auto = false;
            }
            "required" if matches!(m.kind, MountType::Secret | MountType::Ssh) => {
                m.required = bool_value(&val)?
            }
            "size" if m.kind == MountType::Tmpfs => {
                m.size = Some(ram_in_bytes(&val).ok_or(format!("invalid value for size: {val}"))?)
            }
            "env" if m.kind == MountType::Secret => m.env = Some(val),
            "required" | "size" | "env" => return Err(unexpected_for_type(&key, m.kind)),
            "id" => m.id = Some(val),
            "sharing" => {
                m.sharing = Some(match val.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => {
                        return Err(format!(
                            "unsupported sharing value {val:?}{}",
                            did_you_mean(&val, &["shared", "private", "locked"])
                        ))
                    }
                })
            }
            "mode" => m.mode = Some(u32_value(&val, 8)?),
            "uid" => m.uid = Some(u32_value(&val, 10)?),
            "gid" => m.gid = Some(u32_value(&val, 10)?),
            _ => {
                return Err(format!(
                    "unexpected key '{key}' in '{field}'{}",
                    did_you_mean(&key, &ALL_KEYS)
                ))
            }
        }
    }
    validate(&mut m, ro_auto)?;
    Ok(m)
}

fn has_variable(v: &str) -> bool {
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '$' && chars.clone().next().is_some() {
            return true;
        }
    }
    false
}

fn expanded(val: &str, expand: Option<Expander>) -> Result<Option<String>, String> {
    match expand {
        Some(f) => f(val).map(Some),
        None if val.contains('$') => Ok(None),
        None => Ok(Some(val.to_string())),
    }
}

fn unexpected_for_type(key: &str, kind: MountType) -> String {
    format!("unexpected key '{key}' for mount type '{}'", kind.as_str())
}

fn validate(m: &mut Mount, ro_auto: bool) -> Result<(), String> {
    let file_info_allowed = matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    );
    if !file_info_allowed {
        for (name, set) in [
            ("mode", m.mode.is_some()),
            ("uid", m.uid.is_some()),
            ("gid", m.gid.is_some()),
        ] {
            if set {
                return Err(format!(
                    "{name} not allowed for {:?} type mounts",
                    m.kind.as_str()
                ));
            }
        }
    }
    if ro_auto {
        m.readonly = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
    }
    match m.kind {
        MountType::Secret => {
            if m.from.is_some() {
                return Err("secret mount should not have a from".into());
            }
            if m.source.is_some() && m.id.is_some() {
                return Err("both source and id can't be set".into());
            }
            if m.source.is_none() && m.target.is_none() && m.id.is_none() && m.env.is_none() {
                return Err(
                    "invalid secret mount. one of source, target, id or env required".into(),
                );
            }
        }
        MountType::Tmpfs | MountType::Ssh if m.from.is_some() => {
            return Err(format!("{} mount should not have a from", m.kind.as_str()));
        }
        MountType::Bind | MountType::Cache | MountType::Tmpfs if m.target.is_none() => {
            return Err(format!("{} mount requires a target", m.kind.as_str()));
        }
        _ => {}
    }
    if m.sharing.is_some() && m.kind != MountType::Cache {
        return Err(format!(
            "invalid cache sharing set for {} mount",
            m.kind.as_str()
        ));
    }
    Ok(())
}

/// Go's `encoding/csv` for one record: commas separate fields, `"..."` quotes a field and
/// `""` inside quotes is a literal quote.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if at_field_start => loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => match chars.peek() {
                        None | Some(',') => break,
                        Some(_) => return Err(format!("failed to parse csv mounts: extraneous or missing \" in quoted-field: {line}")),
                    },
                    Some(c) => field.push(c),
                    None => return Err(format!("failed to parse csv mounts: extraneous or missing \" in quoted-field: {line}")),
                }
            },
            '"' => {
                return Err(format!(
                    "failed to parse csv mounts: bare \" in non-quoted-field: {line}"
                ))
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
                continue;
            }
            c => field.push(c),
        }
        at_field_start = false;
    }
    fields.push(field);
    Ok(fields)
}

/// docker/go-units `RAMInBytes`: `512`, `64k`, `1.5g`, `100MiB`.
pub fn ram_in_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let number: f64 = s[..split].parse().ok()?;
    let unit = s[split..].trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    let v = number * mult;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// ` (did you mean X?)` when one candidate is close to `got`, else nothing.
pub fn did_you_mean(got: &str, candidates: &[&str]) -> String {
    match super::suggest::closest(got, candidates.iter().copied()) {
        Some(c) => format!(" (did you mean {c}?)"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_mount_with_options() {
        let m = parse_mount(
            "type=cache,target=/root/.cache,id=go,sharing=locked,mode=0755,uid=1000",
            None,
        )
        .unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.target.as_deref(), Some("/root/.cache"));
        assert_eq!(m.sharing, Some(Sharing::Locked));
        assert_eq!(m.mode, Some(0o755));
        assert_eq!(m.uid, Some(1000));
        assert!(!m.readonly);
    }

    #[test]
    fn bind_defaults_readonly() {
        let m = parse_mount("target=/src,from=builder,source=/out", None).unwrap();
        assert_eq!(m.kind, MountType::Bind);
        assert!(m.readonly);
        assert!(!parse_mount("target=/src,rw", None).unwrap().readonly);
    }

    #[test]
    fn secrets_ssh_tmpfs() {
        let m = parse_mount("type=secret,id=tok,env=TOKEN,required", None).unwrap();
        assert_eq!(
            (m.id.as_deref(), m.env.as_deref(), m.required),
            (Some("tok"), Some("TOKEN"), true)
        );
        assert!(parse_mount("type=ssh", None).is_ok());
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,size=64m", None)
                .unwrap()
                .size,
            Some(64 << 20)
        );
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(
            parse_mount("type=cahce,target=/x", None).unwrap_err(),
            "unsupported mount type \"cahce\" (did you mean cache?)"
        );
        assert!(parse_mount("type=bind,target=/x,sharing=shared", None)
            .unwrap_err()
            .contains("sharing"));
        assert!(parse_mount("type=bind,target=/x,mode=755", None)
            .unwrap_err()
            .contains("mode not allowed"));
        assert!(parse_mount("type=bind,tagret=/x", None)
            .unwrap_err()
            .contains("did you mean target"));
        assert!(parse_mount("type=cache,target=/x,from=$X", None)
            .unwrap_err()
            .contains("variable expansion"));
        assert!(parse_mount("type=bind", None)
            .unwrap_err()
            .contains("requires a target"));
        assert!(parse_mount("type=cache,target=/x,uid=abc", None).is_err());
    }

    #[test]
    fn variables_are_checked_after_expansion() {
        let m = parse_mount("type=cache,target=$DIR,uid=$UID", None).unwrap();
        assert_eq!((m.target.as_deref(), m.uid), (Some("$DIR"), None));
        let expand = |v: &str| Ok::<_, String>(v.replace("$DIR", "/d").replace("$UID", "7"));
        let m = parse_mount("type=cache,target=$DIR,uid=$UID", Some(&expand)).unwrap();
        assert_eq!((m.target.as_deref(), m.uid), (Some("/d"), Some(7)));
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(split_csv("a,\"b,c\",d").unwrap(), vec!["a", "b,c", "d"]);
        assert!(split_csv("a\"b").is_err());
    }
}
