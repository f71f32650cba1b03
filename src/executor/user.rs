//! Users and groups of an image: resolving `USER`, `--chown` and WORKDIR ownership through the
//! image's own `/etc/passwd` and `/etc/group`, as docker and BuildKit do.

use std::path::Path;

use super::rootfs::read_in_root;
use super::ExecError;

/// A resolved user: numeric ids and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves `user[:group]` (names or numbers) against the files under `root` (None: an empty
/// filesystem, so only numeric ids work). A missing passwd file is fine for numeric users.
pub fn resolve_user(spec: &str, root: Option<&Path>) -> Result<ResolvedUser, ExecError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let read = |p: &str| {
        root.and_then(|r| read_in_root(r, p).ok())
            .unwrap_or_default()
    };
    let passwd = parse_passwd(&read("/etc/passwd"));
    let groups = parse_group(&read("/etc/group"));
    let (uid, mut gid, name, home) = if user.is_empty()
        || (user == "root" && !passwd.iter().any(|p| p.name == "root"))
    {
        // No user, or root in an image without /etc/passwd: root, as docker does.
        (0, 0, Some("root".to_string()), "/root".to_string())
    } else if let Ok(uid) = user.parse::<u32>() {
        match passwd.iter().find(|p| p.uid == uid) {
            Some(p) => (uid, p.gid, Some(p.name.clone()), p.home.clone()),
            None => (uid, 0, None, "/".to_string()),
        }
    } else {
        let p = passwd
            .iter()
            .find(|p| p.name == user)
            .ok_or_else(|| ExecError::User {
                spec: spec.to_string(),
                message: format!("unable to find user {user}: no matching entries in passwd file"),
            })?;
        (p.uid, p.gid, Some(p.name.clone()), p.home.clone())
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| ExecError::User {
                    spec: spec.to_string(),
                    message: format!("unable to find group {g}: no matching entries in group file"),
                })?,
        };
    }
    let additional_gids = match (&name, group) {
        (Some(n), None) => groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == n) && g.gid != gid)
            .map(|g| g.gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Resolves a `--chown` value: like [`resolve_user`], but a user given alone takes its own
/// primary group only when named; `--chown=1000` means 1000:1000 (BuildKit's rule).
pub fn resolve_chown(spec: &str, root: Option<&Path>) -> Result<(u32, u32), ExecError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let r = resolve_user(spec, root)?;
    let gid = match group {
        Some(_) => r.gid,
        None if user.parse::<u32>().is_ok() => r.uid,
        None => r.gid,
    };
    Ok((r.uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:app\napp:x:1001:\nwheel:x:10:app,other\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn names_and_numbers() {
        let r = root();
        let u = resolve_user("app", Some(r.path())).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1001, "/home/app"));
        assert_eq!(u.additional_gids, vec![50, 10]);
        assert_eq!(resolve_user("app:staff", Some(r.path())).unwrap().gid, 50);
        assert_eq!(resolve_user("1000:7", Some(r.path())).unwrap().gid, 7);
        assert_eq!(resolve_user("4242", None).unwrap().gid, 0);
        assert_eq!(resolve_user("root", None).unwrap().uid, 0);
        assert!(resolve_user("nobody", Some(r.path()))
            .unwrap_err()
            .to_string()
            .contains("no matching entries in passwd file"));
        assert!(resolve_user("app:nogroup", Some(r.path())).is_err());
    }

    #[test]
    fn chown_rules() {
        let r = root();
        assert_eq!(resolve_chown("1000", None).unwrap(), (1000, 1000));
        assert_eq!(resolve_chown("app", Some(r.path())).unwrap(), (1000, 1001));
        assert_eq!(resolve_chown("app:0", Some(r.path())).unwrap(), (1000, 0));
    }
}
