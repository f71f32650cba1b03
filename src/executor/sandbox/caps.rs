//! Capabilities of the sandboxed process: docker's default set (moby `oci/caps/defaults.go`)
//! for a normal step, every capability the host grants for `--security=insecure` (BuildKit's
//! `WithInsecureSpec`), and the raw `capset(2)` call (no extra crate needed).
//!
//! For root the default set lands in the bounding, permitted and effective sets. The
//! inheritable set stays empty, as docker, containerd and runc do since CVE-2022-24769 (a
//! non-empty one lets a program with inheritable file capabilities gain them). A non-root user
//! keeps the bounding set only: permitted and effective are empty after `setuid`, so
//! `grep CapEff /proc/self/status` shows 0, as in docker.

use nix::errno::Errno;
use nix::libc;

/// Capability numbers (`linux/capability.h`, identical on x86_64 and aarch64).
pub const CAP_CHOWN: u32 = 0;
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_FOWNER: u32 = 3;
pub const CAP_FSETID: u32 = 4;
pub const CAP_KILL: u32 = 5;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_NET_RAW: u32 = 13;
pub const CAP_SYS_CHROOT: u32 = 18;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_MKNOD: u32 = 27;
pub const CAP_AUDIT_WRITE: u32 = 29;
pub const CAP_SETFCAP: u32 = 31;

/// Docker's default capabilities.
pub const DEFAULT_CAPS: [u32; 14] = [
    CAP_CHOWN,
    CAP_DAC_OVERRIDE,
    CAP_FSETID,
    CAP_FOWNER,
    CAP_MKNOD,
    CAP_NET_RAW,
    CAP_SETGID,
    CAP_SETUID,
    CAP_SETFCAP,
    CAP_SETPCAP,
    CAP_NET_BIND_SERVICE,
    CAP_SYS_CHROOT,
    CAP_KILL,
    CAP_AUDIT_WRITE,
];

/// The default set as a bit mask (`0xa80425fb`, docker's `CapBnd`).
pub fn default_mask() -> u64 {
    DEFAULT_CAPS.iter().fold(0, |m, c| m | (1u64 << c))
}

/// Every capability name, by number (`linux/capability.h`).
pub const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A `--cap-add`/`--cap-drop` word (`NET_ADMIN`, `cap_net_admin`, `ALL`) as a mask.
pub fn parse_cap(word: &str) -> Option<u64> {
    let upper = word.to_ascii_uppercase();
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if name == "ALL" {
        return Some(u64::MAX);
    }
    CAP_NAMES.iter().position(|n| *n == name).map(|i| 1u64 << i)
}

/// The three sets `capset(2)` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// What the process ends up with, and what has to happen for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapPlan {
    pub bounding: u64,
    pub sets: CapSets,
    pub ambient: u64,
}

impl CapPlan {
    /// `available`: the caller's bounding set (what the host lets us hand out).
    pub fn new(insecure: bool, uid: u32, available: u64) -> CapPlan {
        if insecure {
            // BuildKit adds every capability to all five sets (ambient included, so a
            // non-root user keeps them across exec).
            return CapPlan {
                bounding: available,
                sets: CapSets {
                    effective: available,
                    permitted: available,
                    inheritable: available,
                },
                ambient: available,
            };
        }
        let caps = default_mask() & available;
        let granted = if uid == 0 { caps } else { 0 };
        CapPlan {
            bounding: caps,
            sets: CapSets {
                effective: granted,
                permitted: granted,
                inheritable: 0,
            },
            ambient: 0,
        }
    }

    /// `--cap-add` / `--cap-drop` (masks; `ALL` is every bit) on top of this plan, limited to
    /// what the host grants.
    pub fn adjusted(mut self, add: u64, drop: u64, available: u64, uid: u32) -> CapPlan {
        if add == 0 && drop == 0 {
            return self;
        }
        let caps = ((self.bounding & !drop) | add) & available;
        let granted = if uid == 0 { caps } else { 0 };
        self.bounding = caps;
        self.sets.effective = granted;
        self.sets.permitted = granted;
        self
    }

    /// Whether permitted capabilities must survive the switch to a non-root uid.
    pub fn needs_keepcaps(&self, uid: u32) -> bool {
        uid != 0 && self.sets.permitted != 0
    }

    /// The capabilities (up to `last_cap`) to drop from the bounding set.
    pub fn to_drop(&self, last_cap: u32) -> Vec<u32> {
        (0..=last_cap.min(63))
            .filter(|c| self.bounding & (1u64 << c) == 0)
            .collect()
    }
}

/// What the host grants this process: the capabilities it holds and may hand out (its
/// bounding and permitted sets intersected), and the highest capability number.
#[derive(Debug, Clone, Copy)]
pub struct HostCaps {
    pub bounding: u64,
    pub last_cap: u32,
}

impl HostCaps {
    /// Reads `/proc/self/status` and `/proc/sys/kernel/cap_last_cap`.
    pub fn read() -> HostCaps {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let all = low_bits(last_cap);
        let bounding = parse_status_mask(&status, "CapBnd").unwrap_or(all)
            & parse_status_mask(&status, "CapPrm").unwrap_or(all);
        HostCaps { bounding, last_cap }
    }
}

fn low_bits(last_cap: u32) -> u64 {
    if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    }
}

/// Parses a `CapXxx:\t<hex>` line of `/proc/<pid>/status`.
pub fn parse_status_mask(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| u64::from_str_radix(v.trim(), 16).ok())?
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `capset(2)` for the calling thread (version 3: two 32-bit words per set).
pub fn capset(sets: &CapSets) -> Result<(), Errno> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let data: [CapData; 2] = [0, 1].map(|i| CapData {
        effective: word(sets.effective, i),
        permitted: word(sets.permitted, i),
        inheritable: word(sets.inheritable, i),
    });
    // SAFETY: header and data are valid, correctly laid out (repr(C)) for version 3, and
    // outlive the call; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_mask() {
        assert_eq!(default_mask(), 0xa804_25fb);
    }

    #[test]
    fn plans() {
        let all = 0x1ff_ffff_ffff;
        let root = CapPlan::new(false, 0, all);
        assert_eq!(root.bounding, 0xa804_25fb);
        assert_eq!(root.sets.effective, 0xa804_25fb);
        assert_eq!(root.sets.inheritable, 0);
        assert_eq!(root.ambient, 0);
        assert!(!root.needs_keepcaps(0));
        assert!(root.to_drop(40).contains(&CAP_SYS_ADMIN));
        assert!(!root.to_drop(40).contains(&CAP_CHOWN));
        assert_eq!(root.to_drop(40).len(), 41 - 14);

        let user = CapPlan::new(false, 1000, all);
        assert_eq!(user.bounding, 0xa804_25fb);
        assert_eq!(user.sets, CapSets::default());
        assert!(!user.needs_keepcaps(1000));

        let insecure = CapPlan::new(true, 1000, all);
        assert_eq!(insecure.bounding, all);
        assert_eq!(insecure.ambient, all);
        assert!(insecure.needs_keepcaps(1000));
        assert!(insecure.to_drop(40).is_empty());

        // A host that withholds a default capability cannot hand it out.
        let limited = CapPlan::new(false, 0, all & !(1 << CAP_NET_RAW));
        assert_eq!(limited.bounding & (1 << CAP_NET_RAW), 0);
    }

    #[test]
    fn cap_add_and_drop() {
        let all = 0x1ff_ffff_ffff;
        let net_admin = parse_cap("NET_ADMIN").unwrap();
        assert_eq!(net_admin, 1 << 12);
        assert_eq!(parse_cap("cap_chown"), Some(1));
        assert_eq!(parse_cap("nope"), None);
        let only = CapPlan::new(false, 0, all).adjusted(net_admin, u64::MAX, all, 0);
        assert_eq!(only.bounding, net_admin);
        assert_eq!(only.sets.effective, net_admin);
        let everything = CapPlan::new(false, 0, all).adjusted(u64::MAX, 0, all, 0);
        assert_eq!(everything.bounding, all);
        let no_chown = CapPlan::new(false, 1000, all).adjusted(0, 1, all, 1000);
        assert_eq!(no_chown.bounding, default_mask() & !1);
        assert_eq!(no_chown.sets.permitted, 0);
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapBnd:\t000001fffeffffff\n";
        assert_eq!(parse_status_mask(s, "CapBnd"), Some(0x1ff_feff_ffff));
        assert_eq!(parse_status_mask(s, "CapInh"), Some(0));
        assert_eq!(parse_status_mask(s, "CapAmb"), None);
        assert_eq!(low_bits(40), 0x1ff_ffff_ffff);
    }
}
