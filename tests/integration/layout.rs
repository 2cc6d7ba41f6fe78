//! The module layering of `src/`, read from the source: every `crate::`
//! path in a top-level module names a module below it in [`LAYERS`], so
//! there is no import circle and no import from a lower room to a higher
//! one. A new top-level module must be placed in the list on purpose.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top to bottom; a module may use only the ones after it.
const LAYERS: &[&str] = &[
    "commands",
    "cli",
    "agent",
    "source",
    "telemetry",
    "backend",
    "plan",
    "policy",
    "config",
    "logging",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::NAME` a file refers to, outside comments.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
            rest = after;
        }
    }
    names
}

#[test]
fn imports_only_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "main" || module == "lib" {
            continue;
        }
        let Some(rank) = LAYERS.iter().position(|m| *m == module) else {
            wrong.push(format!(
                "{}: module {module} is not in LAYERS",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_paths(&text) {
            if used == module || used == "VERSION" {
                continue;
            }
            match LAYERS.iter().position(|m| *m == used) {
                Some(at) if at > rank => {}
                _ => wrong.push(format!(
                    "{}: {module} uses crate::{used}, which is not below it",
                    file.strip_prefix(&src).unwrap().display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_paths_and_skips_comments() {
    let text = "use crate::plan::{Family};\n// crate::agent is only mentioned\nlet x = crate::config::read(p);\n";
    let names: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(names, ["config", "plan"]);
}
