//! The Dockerfile's build context, rendered as the engine sees it from a
//! clean clone, and the image built from it.
//!
//! A clean clone holds the files git tracks; `.dockerignore` then decides
//! which of them the engine sends. Its rules are applied here as Docker's
//! pattern matcher applies them (moby/patternmatcher): patterns in order,
//! the last one matching a path or any of its parent directories wins, `!`
//! re-includes; `*` and `?` stay within one path segment and `**` spans
//! any number. Character classes are not supported and fail the test, so a
//! pattern this code would misread cannot pass unnoticed.
//!
//! The rendered directory is built with `scripts/image-build.sh` (the same
//! script as `make image`) under a `flock`, so parallel tests share one
//! build; the engine's layer cache makes a rebuild of unchanged sources
//! take seconds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{COMMAND_TIMEOUT, describe, run_bounded};
use crate::repo;

/// The image these tests build and run.
pub const TAG: &str = concat!(
    "localhost/ip-masq-agent:",
    env!("CARGO_PKG_VERSION"),
    "-test"
);

/// A first build compiles the release binary and may make the base images
/// (debootstrap) on a 2-core machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// The runtime image's budget (uncompressed, as `podman image inspect`
/// reports it).
const MAX_IMAGE_BYTES: u64 = 40 << 20;

/// One `.dockerignore` line.
#[derive(Debug)]
struct Pattern {
    segments: Vec<String>,
    exclusion: bool,
}

fn parse_ignore(text: &str) -> Vec<Pattern> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (exclusion, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            assert!(
                !pattern.contains('['),
                ".dockerignore pattern {line:?}: character classes are not supported by this test"
            );
            // filepath.Clean, then a leading `/` dropped: paths are relative
            // to the context.
            let segments: Vec<String> = pattern
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_owned)
                .collect();
            assert!(
                !segments.is_empty(),
                ".dockerignore pattern {line:?} names nothing"
            );
            assert!(
                !segments.iter().any(|s| s == ".."),
                ".dockerignore pattern {line:?} leaves the context"
            );
            Pattern {
                segments,
                exclusion,
            }
        })
        .collect()
}

/// `*` and `?` within one segment.
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            segment_matches(&pattern[1..], name)
                || (!name.is_empty() && segment_matches(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => segment_matches(&pattern[1..], &name[1..]),
        (Some(b'\\'), Some(n)) if pattern.len() > 1 => {
            pattern[1] == *n && segment_matches(&pattern[2..], &name[1..])
        }
        (Some(p), Some(n)) => p == n && segment_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// The whole path against the pattern; `**` spans zero or more segments.
fn path_matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| path_matches(rest, &path[skip..]))
        }
        Some((first, rest)) => {
            !path.is_empty()
                && segment_matches(first.as_bytes(), path[0].as_bytes())
                && path_matches(rest, &path[1..])
        }
    }
}

/// Whether the engine leaves `path` (relative, `/`-separated) out.
fn excluded(patterns: &[Pattern], path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    let mut matched = false;
    for pattern in patterns {
        // An inclusion cannot change a path already excluded, an exclusion
        // only one that is.
        if pattern.exclusion != matched {
            continue;
        }
        let hit = (1..=segments.len()).any(|n| path_matches(&pattern.segments, &segments[..n]));
        if hit {
            matched = !pattern.exclusion;
        }
    }
    matched
}

/// Every file git tracks: what a clean clone has.
fn tracked_files() -> Vec<String> {
    let out = run_bounded(
        Command::new("git")
            .arg("-C")
            .arg(repo())
            .args(["ls-files", "-z"]),
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "{}", describe("git ls-files", &out));
    String::from_utf8(out.stdout)
        .expect("git prints UTF-8 paths here")
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The files of a clean clone that `.dockerignore` lets into the context.
pub fn context_files() -> Vec<String> {
    let ignore =
        std::fs::read_to_string(repo().join(".dockerignore")).expect("reading .dockerignore");
    let patterns = parse_ignore(&ignore);
    tracked_files()
        .into_iter()
        .filter(|path| !excluded(&patterns, path))
        .collect()
}

/// Copies the context into `dest`, modes kept, and returns its files.
pub fn render(dest: &Path) -> Vec<String> {
    let files = context_files();
    for file in &files {
        let from = repo().join(file);
        let to = dest.join(file);
        std::fs::create_dir_all(to.parent().expect("a file has a parent"))
            .unwrap_or_else(|e| panic!("mkdir for {}: {e}", to.display()));
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    }
    files
}

/// Renders the context into a fresh directory and builds `TAG` from it,
/// once at a time across test processes. Returns the directory's files.
pub fn build() -> Vec<String> {
    let dir = tempfile::Builder::new()
        .prefix("imqa-context-")
        .tempdir()
        .expect("temp dir for the build context");
    let files = render(dir.path());
    let lock: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-build.lock");
    let out = run_bounded(
        Command::new("flock")
            .arg(&lock)
            .arg("bash")
            .arg(repo().join("scripts/image-build.sh"))
            .arg(dir.path())
            .arg(TAG),
        BUILD_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        describe("scripts/image-build.sh", &out)
    );
    files
}

/// Every path in the image's filesystem (`podman export` of a container
/// created from it, never started).
fn image_paths() -> BTreeSet<String> {
    let created = run_bounded(
        Command::new("podman").args(["create", "--pull=never", TAG]),
        COMMAND_TIMEOUT,
    );
    assert!(
        created.status.success(),
        "{}",
        describe("podman create", &created)
    );
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    assert!(
        id.bytes().all(|b| b.is_ascii_hexdigit()) && !id.is_empty(),
        "podman create printed {id:?}"
    );
    let dir = tempfile::tempdir().expect("temp dir for the export");
    let tar = dir.path().join("image.tar");
    let exported = run_bounded(
        Command::new("podman")
            .args(["export", "-o"])
            .arg(&tar)
            .arg(&id),
        COMMAND_TIMEOUT,
    );
    let removed = run_bounded(Command::new("podman").args(["rm", &id]), COMMAND_TIMEOUT);
    assert!(
        exported.status.success(),
        "{}",
        describe("podman export", &exported)
    );
    assert!(
        removed.status.success(),
        "{}",
        describe("podman rm", &removed)
    );
    let listed = run_bounded(Command::new("tar").arg("-tf").arg(&tar), COMMAND_TIMEOUT);
    assert!(listed.status.success(), "{}", describe("tar -t", &listed));
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != ".")
        .collect()
}

#[test]
fn dockerignore_rules_match_as_the_engine_applies_them() {
    let patterns = parse_ignore("# comment\n*\n!src/\n!scripts/image-*.sh\nsrc/**/testdata\n");
    for (path, out) in [
        ("Cargo.toml", true),
        ("src/main.rs", false),
        ("src/a/b/c.rs", false),
        ("src/backend/nftables/testdata/x.json", true),
        ("scripts/image-rootfs.sh", false),
        ("scripts/demo.sh", true),
        ("target/release/ip-masq-agent", true),
        ("srcx/main.rs", true),
    ] {
        assert_eq!(excluded(&patterns, path), out, "{path}");
    }
    // A file re-included under an excluded directory (Docker: the later
    // inclusion wins).
    let patterns = parse_ignore("docs\n!docs/keep.md\n");
    assert!(excluded(&patterns, "docs/other.md"));
    assert!(!excluded(&patterns, "docs/keep.md"));
}

#[test]
fn image_builds_from_exactly_the_dockerignore_context() {
    if !crate::require_podman() {
        return;
    }
    let files = build();

    // What the Dockerfile copies from the context is in it, and nothing the
    // build does not need: no tests, fuzz targets, manifests or docs.
    let dockerfile =
        std::fs::read_to_string(repo().join("Dockerfile")).expect("reading Dockerfile");
    for line in dockerfile.lines() {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(
                files
                    .iter()
                    .any(|f| f == source || f.starts_with(&format!("{source}/"))),
                "COPY {source}: not in the build context {files:?}"
            );
        }
    }
    for file in &files {
        for outside in [
            "tests/",
            "fuzz/",
            "manifests/",
            "target/",
            ".git/",
            "README",
        ] {
            assert!(!file.starts_with(outside), "{file} is in the build context");
        }
    }

    // Only what the agent runs: its binary, both iptables variants under
    // every name the agent calls, nft, the extensions its rules use.
    let paths = image_paths();
    let mut expected = vec![
        "usr/local/bin/ip-masq-agent".to_owned(),
        "usr/sbin/xtables-nft-multi".to_owned(),
        "usr/sbin/xtables-legacy-multi".to_owned(),
        "usr/sbin/nft".to_owned(),
        "etc/protocols".to_owned(),
        "lib64".to_owned(),
    ];
    for family in ["iptables", "ip6tables"] {
        for variant in ["", "-nft", "-legacy"] {
            for tool in ["", "-save", "-restore"] {
                expected.push(format!("usr/sbin/{family}{variant}{tool}"));
            }
        }
    }
    for extension in [
        "MASQUERADE",
        "comment",
        "addrtype",
        "statistic",
        "mark",
        "standard",
        "tcp",
        "udp",
    ] {
        expected.push(format!(
            "usr/lib/x86_64-linux-gnu/xtables/libxt_{extension}.so"
        ));
    }
    let missing: Vec<&String> = expected.iter().filter(|p| !paths.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "missing from the image: {missing:?}\nit holds: {paths:?}"
    );
    for absent in [
        "usr/bin/sh",
        "usr/bin/bash",
        "usr/bin/dpkg",
        "usr/bin/apt-get",
        "usr/bin/gcc",
        "usr/local/rust",
    ] {
        assert!(!paths.contains(absent), "{absent} is in the runtime image");
    }

    let size = run_bounded(
        Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", TAG]),
        COMMAND_TIMEOUT,
    );
    assert!(
        size.status.success(),
        "{}",
        describe("podman image inspect", &size)
    );
    let bytes: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .expect("a size in bytes");
    println!(
        "image {TAG}: {bytes} bytes ({:.1} MiB) uncompressed, {} paths",
        bytes as f64 / 1048576.0,
        paths.len()
    );
    assert!(
        bytes <= MAX_IMAGE_BYTES,
        "the image is {bytes} bytes, over {MAX_IMAGE_BYTES}"
    );

    // The entrypoint is the agent.
    let version = run_bounded(
        crate::pod::podman()
            .args(["run", "--rm", "--pull=never", "--network=none"])
            .args(crate::pod::ulimits())
            .args([TAG, "version"]),
        COMMAND_TIMEOUT,
    );
    assert!(
        version.status.success(),
        "{}",
        describe("podman run IMAGE version", &version)
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        concat!("ip-masq-agent ", env!("CARGO_PKG_VERSION"))
    );
}
