//! The default seccomp filter: a deny list assembled into classic BPF by hand (no extra crate),
//! covering what moby's default profile (`profiles/seccomp/default.json`) refuses to a
//! container holding docker's default capabilities.
//!
//! moby's profile is an allow list; ours denies the dangerous calls and allows the rest, so a
//! program using a syscall newer than the list still runs. Denied calls fail with `EPERM`
//! (`clone3` with `ENOSYS`, as moby does, so libc falls back to `clone`, whose flags a filter
//! can inspect). `--security=insecure` installs no filter at all.
//!
//! | group | denied |
//! | --- | --- |
//! | kernel modules, kexec, reboot | `init_module` `finit_module` `delete_module` `create_module` `get_kernel_syms` `query_module` `kexec_load` `kexec_file_load` `reboot` |
//! | mounts | `mount` `umount` `umount2` `pivot_root` `open_tree` `move_mount` `fsopen` `fsconfig` `fsmount` `fspick` `mount_setattr` |
//! | namespaces | `setns`; `unshare` and `clone` with any `CLONE_NEW*` flag; `clone3` (`ENOSYS`) |
//! | clock | `settimeofday` `clock_settime` `clock_settime64` `stime` (`adjtimex`/`clock_adjtime` stay allowed like moby: the kernel refuses changes without `CAP_SYS_TIME`, reads are harmless) |
//! | keyring | `add_key` `request_key` `keyctl` |
//! | tracing, introspection | `bpf` `perf_event_open` `lookup_dcookie` `kcmp` `pidfd_getfd` `process_madvise` `open_by_handle_at` `userfaultfd` `fanotify_init` |
//! | system administration | `acct` `swapon` `swapoff` `quotactl` `quotactl_fd` `syslog` `vhangup` `sethostname` `setdomainname` `iopl` `ioperm` `nfsservctl` `uselib` `ustat` `sysfs` `_sysctl` `vm86` `vm86old` |
//! | NUMA | `mbind` `set_mempolicy` `get_mempolicy` `set_mempolicy_home_node` `move_pages` `migrate_pages` |
//! | io_uring (moby 25+) | `io_uring_setup` `io_uring_enter` `io_uring_register` |
//! | arguments | `personality` other than 0, 8, 0x20000, 0x20008, 0xffffffff; `socket(AF_VSOCK)` |
//!
//! Architectures: on x86_64 the native table and the i386 compat table (`int 0x80`); x32 ABI
//! calls get `ENOSYS` (most kernels ship without x32 anyway). On aarch64 the native table;
//! 32-bit ARM (compat) processes are killed, as for any architecture without a table.
//! Numbers come from the kernel's `unistd_64.h`, `unistd_32.h` and `asm-generic/unistd.h`.

use nix::errno::Errno;
use nix::libc;

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const SockFilter,
}

// Opcodes: class | size/op | mode/source (BPF_LD=0, BPF_W=0, BPF_ABS=0x20; BPF_JMP=5,
// BPF_JA=0, BPF_JEQ=0x10, BPF_JGE=0x30, BPF_JSET=0x40, BPF_K=0; BPF_RET=6).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn arg_low_offset(arg: u32) -> u32 {
    16 + 8 * arg + if cfg!(target_endian = "big") { 4 } else { 0 }
}

/// The syscall tables a filter can cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    I386,
    Aarch64,
}

impl Arch {
    fn audit(self) -> u32 {
        match self {
            Arch::X86_64 => AUDIT_ARCH_X86_64,
            Arch::I386 => AUDIT_ARCH_I386,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }
}

/// The tables for the architecture kiln is built for (empty where we have none).
pub fn native_arches() -> &'static [Arch] {
    if cfg!(target_arch = "x86_64") {
        &[Arch::X86_64, Arch::I386]
    } else if cfg!(target_arch = "aarch64") {
        &[Arch::Aarch64]
    } else {
        &[]
    }
}

/// When a rule denies its syscall.
#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// The (low 32 bits of the) argument has any bit of the mask set.
    AnyBit {
        arg: u32,
        mask: u32,
    },
    /// The argument is none of the values.
    NotIn {
        arg: u32,
        values: &'static [u32],
    },
    /// The argument equals the value.
    Equals {
        arg: u32,
        value: u32,
    },
}

struct Rule {
    name: &'static str,
    /// Numbers on x86_64, i386, aarch64 (None: the call does not exist there).
    nr: [Option<u32>; 3],
    when: When,
    errno: Errno,
}

const fn deny(name: &'static str, nr: [Option<u32>; 3]) -> Rule {
    Rule {
        name,
        nr,
        when: When::Always,
        errno: Errno::EPERM,
    }
}

const fn all(n: u32) -> [Option<u32>; 3] {
    [Some(n), Some(n), Some(n)]
}

/// `CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET` (moby's clone mask).
const CLONE_NS_FLAGS: u32 = 0x7e02_0000;
/// `CLONE_NEWTIME` only means a namespace for `unshare` (it overlaps the exit signal in clone).
const CLONE_NEWTIME: u32 = 0x80;
const AF_VSOCK: u32 = 40;
/// The personalities moby allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, query.
const PERSONALITIES: &[u32] = &[0, 8, 0x20000, 0x20008, 0xffff_ffff];

const N: Option<u32> = None;

#[rustfmt::skip]
const RULES: &[Rule] = &[
    deny("init_module", [Some(175), Some(128), Some(105)]),
    deny("finit_module", [Some(313), Some(350), Some(273)]),
    deny("delete_module", [Some(176), Some(129), Some(106)]),
    deny("create_module", [Some(174), Some(127), N]),
    deny("get_kernel_syms", [Some(177), Some(130), N]),
    deny("query_module", [Some(178), Some(167), N]),
    deny("kexec_load", [Some(246), Some(283), Some(104)]),
    deny("kexec_file_load", [Some(320), N, Some(294)]),
    deny("reboot", [Some(169), Some(88), Some(142)]),
    deny("mount", [Some(165), Some(21), Some(40)]),
    deny("umount", [N, Some(22), N]),
    deny("umount2", [Some(166), Some(52), Some(39)]),
    deny("pivot_root", [Some(155), Some(217), Some(41)]),
    deny("open_tree", all(428)),
    deny("move_mount", all(429)),
    deny("fsopen", all(430)),
    deny("fsconfig", all(431)),
    deny("fsmount", all(432)),
    deny("fspick", all(433)),
    deny("mount_setattr", all(442)),
    deny("setns", [Some(308), Some(346), Some(268)]),
    Rule { name: "unshare", nr: [Some(272), Some(310), Some(97)], when: When::AnyBit { arg: 0, mask: CLONE_NS_FLAGS | CLONE_NEWTIME }, errno: Errno::EPERM },
    Rule { name: "clone", nr: [Some(56), Some(120), Some(220)], when: When::AnyBit { arg: 0, mask: CLONE_NS_FLAGS }, errno: Errno::EPERM },
    Rule { name: "clone3", nr: all(435), when: When::Always, errno: Errno::ENOSYS },
    deny("settimeofday", [Some(164), Some(79), Some(170)]),
    deny("clock_settime", [Some(227), Some(264), Some(112)]),
    deny("clock_settime64", [N, Some(404), N]),
    deny("stime", [N, Some(25), N]),
    deny("add_key", [Some(248), Some(286), Some(217)]),
    deny("request_key", [Some(249), Some(287), Some(218)]),
    deny("keyctl", [Some(250), Some(288), Some(219)]),
    deny("bpf", [Some(321), Some(357), Some(280)]),
    deny("perf_event_open", [Some(298), Some(336), Some(241)]),
    deny("lookup_dcookie", [Some(212), Some(253), Some(18)]),
    deny("kcmp", [Some(312), Some(349), Some(272)]),
    deny("pidfd_getfd", all(438)),
    deny("process_madvise", all(440)),
    deny("open_by_handle_at", [Some(304), Some(342), Some(265)]),
    deny("userfaultfd", [Some(323), Some(374), Some(282)]),
    deny("fanotify_init", [Some(300), Some(338), Some(262)]),
    deny("acct", [Some(163), Some(51), Some(89)]),
    deny("swapon", [Some(167), Some(87), Some(224)]),
    deny("swapoff", [Some(168), Some(115), Some(225)]),
    deny("quotactl", [Some(179), Some(131), Some(60)]),
    deny("quotactl_fd", all(443)),
    deny("syslog", [Some(103), Some(103), Some(116)]),
    deny("vhangup", [Some(153), Some(111), Some(58)]),
    deny("sethostname", [Some(170), Some(74), Some(161)]),
    deny("setdomainname", [Some(171), Some(121), Some(162)]),
    deny("iopl", [Some(172), Some(110), N]),
    deny("ioperm", [Some(173), Some(101), N]),
    deny("nfsservctl", [Some(180), Some(169), Some(42)]),
    deny("uselib", [Some(134), Some(86), N]),
    deny("ustat", [Some(136), Some(62), N]),
    deny("sysfs", [Some(139), Some(135), N]),
    deny("_sysctl", [Some(156), Some(149), N]),
    deny("vm86", [N, Some(166), N]),
    deny("vm86old", [N, Some(113), N]),
    deny("mbind", [Some(237), Some(274), Some(235)]),
    deny("set_mempolicy", [Some(238), Some(276), Some(237)]),
    deny("get_mempolicy", [Some(239), Some(275), Some(236)]),
    deny("set_mempolicy_home_node", all(450)),
    deny("move_pages", [Some(279), Some(317), Some(239)]),
    deny("migrate_pages", [Some(256), Some(294), Some(238)]),
    deny("io_uring_setup", all(425)),
    deny("io_uring_enter", all(426)),
    deny("io_uring_register", all(427)),
    Rule { name: "personality", nr: [Some(135), Some(136), Some(92)], when: When::NotIn { arg: 0, values: PERSONALITIES }, errno: Errno::EPERM },
    Rule { name: "socket", nr: [Some(41), Some(359), Some(198)], when: When::Equals { arg: 0, value: AF_VSOCK }, errno: Errno::EPERM },
];

/// The names of the denied syscalls (documentation, tests).
pub fn denied_names() -> Vec<&'static str> {
    RULES.iter().map(|r| r.name).collect()
}

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

fn ret_errno(errno: Errno) -> SockFilter {
    stmt(BPF_RET_K, RET_ERRNO | (errno as u32 & 0xffff))
}

/// The rules for one architecture: load the syscall number, test each rule, allow the rest.
fn section(arch: Arch) -> Vec<SockFilter> {
    let column = match arch {
        Arch::X86_64 => 0,
        Arch::I386 => 1,
        Arch::Aarch64 => 2,
    };
    let mut p = vec![stmt(BPF_LD_W_ABS, OFF_NR)];
    if arch == Arch::X86_64 {
        p.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        p.push(ret_errno(Errno::ENOSYS));
    }
    let allow = stmt(BPF_RET_K, RET_ALLOW);
    for rule in RULES {
        let Some(nr) = rule.nr[column] else { continue };
        let body: Vec<SockFilter> = match rule.when {
            When::Always => vec![ret_errno(rule.errno)],
            When::AnyBit { arg, mask } => vec![
                stmt(BPF_LD_W_ABS, arg_low_offset(arg)),
                jump(BPF_JMP_JSET_K, mask, 0, 1),
                ret_errno(rule.errno),
                allow,
            ],
            When::Equals { arg, value } => vec![
                stmt(BPF_LD_W_ABS, arg_low_offset(arg)),
                jump(BPF_JMP_JEQ_K, value, 0, 1),
                ret_errno(rule.errno),
                allow,
            ],
            When::NotIn { arg, values } => {
                let n = values.len();
                let mut b = vec![stmt(BPF_LD_W_ABS, arg_low_offset(arg))];
                for (i, v) in values.iter().enumerate() {
                    // Jump over the remaining tests and the deny to the allow.
                    b.push(jump(BPF_JMP_JEQ_K, *v, (n - i) as u8, 0));
                }
                b.push(ret_errno(rule.errno));
                b.push(allow);
                b
            }
        };
        p.push(jump(BPF_JMP_JEQ_K, nr, 0, body.len() as u8));
        p.extend(body);
    }
    p.push(allow);
    p
}

/// Assembles the filter for the given architectures; any other architecture is killed.
pub fn build(arches: &[Arch]) -> Vec<SockFilter> {
    let sections: Vec<Vec<SockFilter>> = arches.iter().map(|a| section(*a)).collect();
    // Header: load arch; per arch "jeq arch; ja section"; then kill.
    let header_len = 1 + 2 * arches.len() + 1;
    let mut p = vec![stmt(BPF_LD_W_ABS, OFF_ARCH)];
    let mut start = header_len;
    for (arch, sec) in arches.iter().zip(&sections) {
        p.push(jump(BPF_JMP_JEQ_K, arch.audit(), 0, 1));
        let here = p.len() + 1;
        p.push(stmt(BPF_JMP_JA, (start - here) as u32));
        start += sec.len();
    }
    p.push(stmt(BPF_RET_K, RET_KILL_PROCESS));
    for sec in sections {
        p.extend(sec);
    }
    p
}

/// The default filter for this machine, or None where kiln has no syscall table.
pub fn default_filter() -> Option<Vec<SockFilter>> {
    let arches = native_arches();
    (!arches.is_empty()).then(|| build(arches))
}

const PR_SET_SECCOMP: libc::c_int = 22;
const SECCOMP_MODE_FILTER: libc::c_ulong = 2;

/// Installs the filter on the calling thread (needs no_new_privs or `CAP_SYS_ADMIN`).
pub fn install(filter: &[SockFilter]) -> Result<(), Errno> {
    let len = libc::c_ushort::try_from(filter.len()).map_err(|_| Errno::EINVAL)?;
    let prog = SockFprog {
        len,
        filter: filter.as_ptr(),
    };
    // SAFETY: `prog` points at `filter`, both valid for the duration of the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::prctl(
            PR_SET_SECCOMP,
            SECCOMP_MODE_FILTER,
            &prog as *const SockFprog as libc::c_ulong,
            0,
            0,
        )
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions `build` emits.
    fn eval(prog: &[SockFilter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_JMP_JA => pc += i.k as usize,
                BPF_JMP_JEQ_K | BPF_JMP_JGE_K | BPF_JMP_JSET_K => {
                    let taken = match i.code {
                        BPF_JMP_JEQ_K => acc == i.k,
                        BPF_JMP_JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const EPERM: u32 = RET_ERRNO | 1;
    const ENOSYS: u32 = RET_ERRNO | 38;

    #[test]
    fn x86_64_table() {
        let p = build(&[Arch::X86_64, Arch::I386]);
        assert!(p.len() < 4096);
        let x = |nr: u32, a0: u64| eval(&p, AUDIT_ARCH_X86_64, nr, [a0, 0, 0, 0, 0, 0]);
        assert_eq!(x(165, 0), EPERM, "mount");
        assert_eq!(x(166, 0), EPERM, "umount2");
        assert_eq!(x(155, 0), EPERM, "pivot_root");
        assert_eq!(x(0, 0), RET_ALLOW, "read");
        assert_eq!(x(59, 0), RET_ALLOW, "execve");
        assert_eq!(x(161, 0), RET_ALLOW, "chroot");
        assert_eq!(x(435, 0), ENOSYS, "clone3");
        // clone: fork/thread flags pass, a namespace flag does not.
        assert_eq!(x(56, 0x003d_0f00), RET_ALLOW);
        assert_eq!(x(56, 0x0100_0011), RET_ALLOW);
        assert_eq!(x(56, 0x1000_0011), EPERM, "CLONE_NEWUSER");
        assert_eq!(x(272, 0x0000_0200), RET_ALLOW, "unshare(CLONE_FS)");
        assert_eq!(x(272, 0x0000_0080), EPERM, "unshare(CLONE_NEWTIME)");
        assert_eq!(x(272, 0x2002_0000), EPERM);
        assert_eq!(x(135, 8), RET_ALLOW, "personality(PER_LINUX32)");
        assert_eq!(x(135, 0xffff_ffff), RET_ALLOW);
        assert_eq!(x(135, 0x0040_0000), EPERM, "personality(ADDR_NO_RANDOMIZE)");
        assert_eq!(x(41, 2), RET_ALLOW, "socket(AF_INET)");
        assert_eq!(x(41, 40), EPERM, "socket(AF_VSOCK)");
        // The high half of a 64-bit argument does not hide flags from the low half.
        assert_eq!(x(56, 0xffff_ffff_0000_0011), RET_ALLOW);
        // x32 ABI numbers never reach the table.
        assert_eq!(x(X32_SYSCALL_BIT | 165, 0), ENOSYS);
        assert_eq!(x(X32_SYSCALL_BIT, 0), ENOSYS);
        // i386 compat numbers.
        let i = |nr: u32| eval(&p, AUDIT_ARCH_I386, nr, [0; 6]);
        assert_eq!(i(21), EPERM, "mount");
        assert_eq!(i(3), RET_ALLOW, "read");
        assert_eq!(i(166), EPERM, "vm86");
        // Anything else is killed.
        assert_eq!(eval(&p, AUDIT_ARCH_AARCH64, 0, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn aarch64_table() {
        let p = build(&[Arch::Aarch64]);
        let a = |nr: u32, a0: u64| eval(&p, AUDIT_ARCH_AARCH64, nr, [a0, 0, 0, 0, 0, 0]);
        assert_eq!(a(40, 0), EPERM, "mount");
        assert_eq!(a(39, 0), EPERM, "umount2");
        assert_eq!(a(41, 0), EPERM, "pivot_root");
        assert_eq!(a(63, 0), RET_ALLOW, "read");
        assert_eq!(a(221, 0), RET_ALLOW, "execve");
        assert_eq!(a(220, 0x1000_0000), EPERM, "clone(CLONE_NEWUSER)");
        assert_eq!(a(220, 0x11), RET_ALLOW);
        assert_eq!(a(435, 0), ENOSYS);
        assert_eq!(eval(&p, AUDIT_ARCH_X86_64, 165, [0; 6]), RET_KILL_PROCESS);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_numbers_match_libc() {
        let p = build(native_arches());
        for (nr, name) in [
            (libc::SYS_mount, "mount"),
            (libc::SYS_umount2, "umount2"),
            (libc::SYS_pivot_root, "pivot_root"),
            (libc::SYS_kexec_load, "kexec_load"),
            (libc::SYS_init_module, "init_module"),
            (libc::SYS_bpf, "bpf"),
            (libc::SYS_keyctl, "keyctl"),
            (libc::SYS_setns, "setns"),
            (libc::SYS_userfaultfd, "userfaultfd"),
            (libc::SYS_open_by_handle_at, "open_by_handle_at"),
            (libc::SYS_swapon, "swapon"),
            (libc::SYS_reboot, "reboot"),
        ] {
            assert_eq!(
                eval(&p, AUDIT_ARCH_X86_64, nr as u32, [0; 6]),
                EPERM,
                "{name}"
            );
        }
    }

    #[test]
    fn every_rule_names_a_call() {
        let names = denied_names();
        for n in [
            "mount",
            "pivot_root",
            "bpf",
            "keyctl",
            "setns",
            "unshare",
            "kexec_load",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        assert!(RULES.iter().all(|r| r.nr.iter().any(Option::is_some)));
    }
}
