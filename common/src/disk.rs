//! Free space of the filesystem holding a path.

use std::path::Path;

/// `(free bytes available to unprivileged users, total bytes)`.
pub fn space(path: &Path) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path)?;
    let frsize = st.f_frsize.max(1);
    Ok((
        st.f_bavail.saturating_mul(frsize),
        st.f_blocks.saturating_mul(frsize),
    ))
}
