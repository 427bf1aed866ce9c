//! Small files written whole and durably beside the stores: a data directory's record of
//! where its log is, and the gateway's dev-mode marker and stored secrets.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` whole or not at all, readable by its owner only: into a
/// temporary file beside it, synced, renamed over `path`, and the directory synced, so a
/// crash leaves the old file or the new one, and a returned write stays.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // The whole name and `.tmp`: `a.json` and `a.key` must not share a temporary file.
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    // `a.json`'s parent is the empty path, which names the working directory.
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty());
    std::fs::File::open(directory.unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_durable_write_replaces_the_file_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("marker.json");
        write_durably(&path, b"first").unwrap();
        write_durably(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|f| f.unwrap().file_name()).collect();
        assert_eq!(names, ["marker.json"], "a temporary file was left");
    }
}
