//! The raw `clone3` system call for `launch.rs`: the kernel's `struct clone_args`, which errors
//! mean "clone3 or CLONE_INTO_CGROUP is not available here", and the few lines of assembly per
//! architecture that run the child on its own stack (a raw `clone3` returns in the child with
//! no Rust frame to return to, unlike glibc's `clone`, which has such a trampoline built in).

use std::ffi::{c_int, c_void};
use std::io;

/// `clone3`'s number on x86_64 and aarch64 (both use the generic table for new calls).
const SYS_CLONE3: libc::c_long = 435;
/// Create the child in the cgroup named by `CloneArgs::cgroup` (include/uapi/linux/sched.h).
pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C, align(8))]
#[derive(Default)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}

/// `clone3` failed because it (or `CLONE_INTO_CGROUP`) is missing here, not because of this
/// cgroup: ENOSYS (before Linux 5.3, or a seccomp filter), E2BIG (5.3–5.6 know a shorter
/// `clone_args`), EINVAL or EOPNOTSUPP (the flag unknown or refused). EPERM too: seccomp
/// profiles written before clone3 existed answer it with EPERM; should it really be a
/// permission problem, the fallback's own write reports it.
pub(super) fn clone3_unusable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM)
    )
}

/// The raw `clone3` system call with `args`; in the child (on the stack `args` gives it, with
/// no Rust frame to return to) call `f(arg)` and `exit` with its result should it return. In
/// the parent: the child's pid, or -errno.
///
/// # Safety
/// `args` must describe a valid stack (`stack`, `stack_size`) that nothing else uses until
/// the child has exec'd or exited, and must include `CLONE_VM | CLONE_VFORK`: the child then
/// runs `f` on orchd's memory while this thread is suspended, so `f` must follow the rules of
/// `launch::child` and `arg` must stay valid until this returns.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn clone3_run(
    args: &CloneArgs,
    f: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the parent path is one `syscall` (which clobbers rcx and r11, declared) whose
    // result comes back in rax; it touches no stack (`nostack`) and may write memory through
    // `args`' pointers, which the compiler must assume anyway (no `nomem`). The child path
    // starts with rsp = stack + stack_size (set by the kernel), 16-byte aligned because the
    // mapping's end is page-aligned, so the `call` leaves rsp ≡ 8 (mod 16) at `f`'s entry as
    // the SysV ABI requires; `arg` and `f` survive the system call in r12 and r13, callee-saved
    // registers not reserved by LLVM, copied into the child with the other registers. The
    // child never leaves the asm block: it ends with the `exit` system call (60), which ends
    // only that thread, and `ud2` is unreachable.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") SYS_CLONE3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") f as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86_64 version.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
pub(super) unsafe fn clone3_run(
    args: &CloneArgs,
    f: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the parent path is one `svc #0` (the kernel preserves every register but x0,
    // which returns the result); it touches no stack (`nostack`) and may write memory through
    // `args`' pointers, which the compiler must assume anyway (no `nomem`). The child path
    // starts with sp = stack + stack_size (set by the kernel), 16-byte aligned as AAPCS64
    // requires because the mapping's end is page-aligned; `arg` and `f` survive in x20 and x21,
    // callee-saved registers not reserved by LLVM (unlike x18, x19, x29). `blr` overwrites x30
    // only in the child, which never leaves the asm block: it ends with the `exit` system call
    // (93), which ends only that thread, and `brk` is unreachable.
    unsafe {
        core::arch::asm!(
            "svc #0",
            "cbnz x0, 2f",
            "mov x0, x20",
            "blr x21",
            "mov x8, #93",
            "svc #0",
            "brk #1",
            "2:",
            inlateout("x0") args as *const CloneArgs => ret,
            in("x1") std::mem::size_of::<CloneArgs>(),
            in("x8") SYS_CLONE3,
            in("x20") arg,
            in("x21") f as usize,
            options(nostack),
        );
    }
    ret
}
