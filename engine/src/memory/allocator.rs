//! The one allocator setting the binaries make (they use mimalloc as their global allocator).

/// Tells mimalloc to keep the memory it frees instead of handing it back to the OS a second later
/// (mimalloc 3's default). The memory pool already bounds what the operators hold, and every page
/// given back is faulted in and zeroed again when the next run or batch needs it (on this VM a trip to
/// the host: 2.5 % of a sort's samples were the kernel's `clear_page_erms`). Measured on the 10 GB Parquet sort at 2 GB, one
/// binary, runs one after another: 54.0-58.5 s -> 46.3-46.9 s, peak RSS 1.89 -> 2.04 GB.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins. Call it first thing in `main`.
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` in the mimalloc 3.x header that libmimalloc-sys 0.1 builds (the crate
    // exposes no constant for it); -1 means never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's options are plain integers; main calls this before it starts a thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn option_15_is_mimallocs_purge_delay() {
        // Its default is 1000 (ms) in mimalloc 3; the options beside it default to 1 and 0.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(15) }, 1000);
        }
    }
}
