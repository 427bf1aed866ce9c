// Reading the recorded provider traffic (`gateway/tests/fixtures`), the hand-written cases
// (`gateway/adapters/tests/events`) and the checked-in expected output: shared by the
// adapters' `recorded_translations` test and the gateway's Messages relay test, each of
// which `include!`s this file into a module of its own.

/// The files of a fixture directory, sorted by name.
pub fn files(directory: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(directory)
        .expect("fixtures")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The upstream bytes of a recorded stream: raw SSE, or one event's data per line.
pub fn stream_bytes(path: &std::path::Path) -> Option<Vec<u8>> {
    let name = path.file_name()?.to_str()?;
    let text = std::fs::read(path).ok()?;
    if name.ends_with(".chunks.txt") {
        let mut sse = Vec::new();
        for line in text.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            sse.extend_from_slice(b"data: ");
            sse.extend_from_slice(line);
            sse.extend_from_slice(b"\n\n");
        }
        return Some(sse);
    }
    let raw = name.ends_with(".sse") || (name.contains("-streaming-") && name.ends_with(".txt"));
    raw.then_some(text)
}

/// The hand-written cases of a file: each `### title` line and the text after it.
pub fn cases(path: &std::path::Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("hand-written cases");
    text.split("### ")
        .filter(|case| !case.is_empty())
        .map(|case| {
            let (title, body) = case.split_once('\n').expect("a title line");
            (title.to_owned(), body.to_owned())
        })
        .collect()
}

/// Compares `got` line by line with the checked-in `expected` file, or, with
/// `UPDATE_EXPECTED=1` set, writes it there (after a deliberate change).
pub fn check_expected(got: &str, expected: &std::path::Path) {
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::create_dir_all(expected.parent().unwrap()).expect("directory");
        std::fs::write(expected, got).expect("write expected");
        return;
    }
    let wanted = std::fs::read_to_string(expected).expect("expected output");
    for (at, (got, wanted)) in got.lines().zip(wanted.lines()).enumerate() {
        assert_eq!(got, wanted, "line {} of {}", at + 1, expected.display());
    }
    assert_eq!(got.lines().count(), wanted.lines().count(), "line count of {}", expected.display());
}
