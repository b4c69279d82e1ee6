//! Giving back what only start-up used, once orchd is ready.
//!
//! Start-up runs code that steady state never runs again: argument and configuration parsing,
//! unit validation, the first spawn of every service. Those pages of orchd's binary stay
//! mapped, and on recent kernels a fault maps the whole (large) page-cache folio around the
//! page it needs, so a few touched functions keep megabytes of the binary resident. Dropping
//! orchd's mappings of its own read-only, unmodified binary pages (`MADV_DONTNEED`) unmaps
//! them; the page cache keeps them (until the kernel reclaims them), so code that runs again
//! normally comes back with a minor fault. The kernel does the same under memory pressure; this
//! does it at a known moment, so that `ps` and PSS show what orchd really uses. Freed heap
//! memory goes back with `malloc_trim`.
//!
//! Only the binary's own mappings are touched: they stay mapped for orchd's whole life, so the
//! ranges read from `/proc/self/smaps` cannot be unmapped and reused by something else before
//! the `madvise` (a shared library's, or `ld.so.cache` during an NSS `dlopen`, could). And only
//! those that are read-only and hold no private page, in memory or swapped out
//! (`Anonymous`, `Swap`, `Private_Hugetlb` all 0): `MADV_DONTNEED` on a private page would
//! discard it (relocated data, a debugger's breakpoint). A uprobe or breakpoint set in the
//! milliseconds between the read and the `madvise` would be lost; orchd sheds once, at start-up.

use std::fs;

/// What [`shed_startup`] gave back, in KiB of resident memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    pub binary_kib: u64,
}

/// Unmap orchd's read-only, unmodified binary pages and trim the heap. Blocking (reads
/// `/proc/self/smaps`); meant to be called once, when start-up is done.
pub fn shed_startup() -> Shed {
    let binary_kib = match (
        fs::read_to_string("/proc/self/smaps"),
        fs::read_link("/proc/self/exe"),
    ) {
        (Ok(smaps), Ok(exe)) => shed_mappings(&smaps, &exe.to_string_lossy()),
        _ => 0,
    };
    trim_heap();
    Shed { binary_kib }
}

/// One mapping of `/proc/self/smaps`, as far as shedding is concerned.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// What is known of the mapping being read: it may be shed once every private-page count
/// has been seen and was 0.
struct Candidate {
    mapping: Mapping,
    wanted: bool,
    /// `Anonymous`, `Swap`, `Private_Hugetlb` seen (each must be 0).
    seen: [bool; 3],
}

const PRIVATE_COUNTS: [&str; 3] = ["Anonymous:", "Swap:", "Private_Hugetlb:"];

/// The read-only private mappings of `exe` with no private page, in memory or swapped out.
fn sheddable(smaps: &str, exe: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<Candidate> = None;
    let flush = |c: Option<Candidate>, out: &mut Vec<Mapping>| {
        if let Some(c) = c
            && c.wanted
            && c.seen.iter().all(|&s| s)
        {
            out.push(c.mapping);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            // A new mapping: "start-end perms offset dev inode path".
            flush(current.take(), &mut out);
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            // The binary itself, named in one piece (not " (deleted)", no space in it).
            let wanted = !exe.is_empty()
                && path == exe
                && fields.next().is_none()
                && perms.starts_with('r')
                && perms.as_bytes().get(1) == Some(&b'-')
                && perms.ends_with('p');
            current = Some(Candidate {
                mapping: Mapping {
                    start,
                    end,
                    rss_kib: 0,
                },
                wanted,
                seen: [false; 3],
            });
            continue;
        }
        let Some(c) = current.as_mut() else {
            continue;
        };
        let value = fields.next().and_then(|v| v.parse::<u64>().ok());
        if first == "Rss:" {
            c.mapping.rss_kib = value.unwrap_or(0);
        } else if let Some(i) = PRIVATE_COUNTS.iter().position(|&k| k == first) {
            match value {
                Some(0) => c.seen[i] = true,
                _ => c.wanted = false,
            }
        }
    }
    flush(current.take(), &mut out);
    out
}

fn shed_mappings(smaps: &str, exe: &str) -> u64 {
    let mut shed = 0;
    for m in sheddable(smaps, exe) {
        // SAFETY: [start, end) is a whole private mapping of orchd's own binary, which stays
        // mapped for orchd's life (so the range is still that mapping now); it is read-only and
        // holds no private page, in memory or in swap (checked above), so its contents are
        // exactly the file's: dropping the page-table entries loses nothing, and the next
        // access faults the same bytes back in. No Rust object owns this memory.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            shed += m.rss_kib;
        }
    }
    shed
}

#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory of glibc's arenas to the kernel.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d000000000-55d000100000 r--p 00000000 fd:01 42 /usr/sbin/orchd
Size:               1024 kB
Rss:                 700 kB
Anonymous:             0 kB
Swap:                  0 kB
Private_Hugetlb:       0 kB
55d000100000-55d000500000 r-xp 00100000 fd:01 42 /usr/sbin/orchd
Rss:                4000 kB
Anonymous:             0 kB
Swap:                  0 kB
Private_Hugetlb:       0 kB
VmFlags: rd ex mr mw me
55d000500000-55d000540000 r--p 00500000 fd:01 42 /usr/sbin/orchd
Rss:                 200 kB
Anonymous:           200 kB
Swap:                  0 kB
Private_Hugetlb:       0 kB
55d000540000-55d000560000 r--p 00540000 fd:01 42 /usr/sbin/orchd
Rss:                   0 kB
Anonymous:             0 kB
Swap:                128 kB
Private_Hugetlb:       0 kB
55d000560000-55d000570000 r--p 00560000 fd:01 42 /usr/sbin/orchd
Rss:                   0 kB
55d000570000-55d000580000 rw-p 00570000 fd:01 42 /usr/sbin/orchd
Rss:                  64 kB
Anonymous:            64 kB
Swap:                  0 kB
Private_Hugetlb:       0 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 43 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1000 kB
Anonymous:             0 kB
Swap:                  0 kB
Private_Hugetlb:       0 kB
7f0000500000-7f0000501000 r--p 00000000 fd:01 44 /usr/sbin/orchd (deleted)
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
Private_Hugetlb:       0 kB
";

    #[test]
    fn only_the_binarys_read_only_mappings_without_private_pages() {
        let m = sheddable(SMAPS, "/usr/sbin/orchd");
        assert_eq!(
            m,
            vec![
                Mapping {
                    start: 0x55d000000000,
                    end: 0x55d000100000,
                    rss_kib: 700
                },
                Mapping {
                    start: 0x55d000100000,
                    end: 0x55d000500000,
                    rss_kib: 4000
                },
            ],
            "not: relocated (Anonymous), swapped-out private pages (Swap), counts missing, \
             writable, other files, a deleted binary"
        );
        assert!(sheddable(SMAPS, "").is_empty());
        assert!(sheddable(SMAPS, "/usr/sbin/other").is_empty());
    }

    #[test]
    fn shedding_our_own_binary_keeps_it_running() {
        // This test binary's own code: shed it and go on calling into it.
        let shed = shed_startup();
        assert!(shed.binary_kib > 0, "{shed:?}");
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 500_500);
        let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = fs::read_link("/proc/self/exe").unwrap();
        // Still mapped (the calls above faulted some of it back), still the same mappings.
        assert!(!sheddable(&smaps, &exe.to_string_lossy()).is_empty());
    }
}
