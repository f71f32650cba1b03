//! Bridges outlive the kiln root that made them when the root is deleted without removing its
//! networks (test roots, `rm -rf`). A machine-wide registry, `/run/kiln/bridges/<bridge>`,
//! names each bridge's root; whenever a bridge is set up, bridges whose root is gone are torn
//! down (link and tagged iptables rules), so leaks do not pile up.

use std::path::{Path, PathBuf};

use super::error::NetworkError;
use super::{firewall, link, state::NetworkInfo};

fn registry() -> PathBuf {
    PathBuf::from("/run/kiln/bridges")
}

/// Records that `info`'s bridge belongs to the networks directory `dir`.
pub(crate) fn register(dir: &Path, info: &NetworkInfo) -> Result<(), NetworkError> {
    let Some(bridge) = &info.bridge else {
        return Ok(());
    };
    let reg = registry();
    std::fs::create_dir_all(&reg).map_err(|e| NetworkError::io("cannot create", &reg, e))?;
    let path = reg.join(bridge);
    let text = format!("{}\n{}\n", dir.display(), info.id);
    crate::cache::lock::write_atomic(&path, text.as_bytes())
        .map_err(|e| NetworkError::io("cannot write", &path, e))
}

pub(crate) fn unregister(info: &NetworkInfo) {
    if let Some(bridge) = &info.bridge {
        let _ = std::fs::remove_file(registry().join(bridge));
    }
}

/// Tears down bridges whose networks directory no longer exists. Call with the machine-wide
/// IPAM lock held.
pub(crate) fn collect() {
    let Ok(entries) = std::fs::read_dir(registry()) else {
        return;
    };
    for entry in entries.flatten() {
        let bridge = entry.file_name().to_string_lossy().into_owned();
        if bridge.starts_with('.') {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(dir), Some(id)) = (lines.next(), lines.next()) else {
            continue;
        };
        if Path::new(dir).exists() || id.len() < 12 {
            continue;
        }
        tracing::debug!(bridge, dir, "removing the bridge of a deleted kiln root");
        let info = NetworkInfo {
            id: id.to_string(),
            name: String::new(),
            driver: "bridge".into(),
            created: String::new(),
            subnet: None,
            gateway: None,
            internal: false,
            user_subnet: false,
            labels: Default::default(),
            bridge: Some(bridge.clone()),
            endpoints: Default::default(),
            last_ip: None,
        };
        if firewall::teardown_network(&info).is_ok() && link::delete_link(&bridge).is_ok() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
