//! The house a newcomer walks: `src/`'s folders are its layers (the map is `lib.rs`'s doc), and
//! dependencies point one way, between files and between folders. An edge is a path outside
//! comments and tests that names another file's module: `crate::…`, `super::…`, `self::…`, or a
//! child module a file declares (`mod ambient;` then `ambient::…`), with `{…}` groups read
//! through. A cycle fails the test, naming its files or folders.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::common::repo;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// One file of `src/`: its module path (`engine::plan`; `components` for components/mod.rs)
/// and the code that counts (tests cut off, comment lines dropped).
struct Source {
    module: Vec<String>,
    is_folder: bool,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = repo().join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    let texts: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read_to_string(f).unwrap()))
        .collect();
    let mut sources = Vec::new();
    for (file, text) in &texts {
        let relative = file.strip_prefix(&root).unwrap();
        let mut module: Vec<String> = relative
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        let is_folder = module.last().is_some_and(|m| m == "mod");
        if is_folder {
            module.pop();
        }
        if module == ["main"] || module == ["lib"] || test_only(&module, &texts, &root) {
            continue;
        }
        let code = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        sources.push(Source {
            module,
            is_folder,
            code,
        });
    }
    sources
}

/// Whether the file's parent declares it under `#[cfg(test)]` (tests/support, not the house).
fn test_only(module: &[String], texts: &BTreeMap<PathBuf, String>, root: &Path) -> bool {
    let (name, parent) = module.split_last().unwrap();
    let parent_file = if parent.is_empty() {
        root.join("lib.rs")
    } else {
        root.join(parent.join("/")).join("mod.rs")
    };
    texts.get(&parent_file).is_some_and(|text| {
        text.contains(&format!("#[cfg(test)]\nmod {name};"))
            || text.contains(&format!("#[cfg(test)]\npub mod {name};"))
    })
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Every path written from `start` (just after a `crate::`-like prefix): `a::b::C`,
/// `a::{b, c::D}`, expanded to their segment lists.
fn paths(text: &str, start: usize) -> Vec<Vec<String>> {
    fn parse(
        chars: &[char],
        mut i: usize,
        prefix: Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) -> usize {
        let mut segments = prefix;
        loop {
            if chars.get(i) == Some(&'{') {
                i += 1;
                loop {
                    while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                        i += 1;
                    }
                    match chars.get(i) {
                        Some('}') | None => return i + 1,
                        _ => i = parse(chars, i, segments.clone(), out),
                    }
                }
            }
            let ident: String = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == '*')
                .collect();
            i += ident.len();
            if !ident.is_empty() && ident != "self" && ident != "*" {
                segments.push(ident);
            }
            if chars[i..].starts_with(&[':', ':']) {
                i += 2;
                continue;
            }
            out.push(segments);
            return i;
        }
    }
    let chars: Vec<char> = text[start..].chars().collect();
    let mut out = Vec::new();
    parse(&chars, 0, Vec::new(), &mut out);
    out
}

/// Whether `at` lies inside an inline `mod NAME { … }` of the file.
fn in_inline_module(code: &str, at: usize) -> bool {
    let mut depth = 0usize;
    let mut modules: Vec<usize> = Vec::new();
    for (i, c) in code[..at].char_indices() {
        if c == '{' {
            depth += 1;
            let before = code[..i].trim_end();
            if before.rsplit(char::is_whitespace).nth(1) == Some("mod") {
                modules.push(depth);
            }
        } else if c == '}' {
            if modules.last() == Some(&depth) {
                modules.pop();
            }
            depth = depth.saturating_sub(1);
        }
    }
    !modules.is_empty()
}

/// Edges between files, named by module path (`engine::plan`).
fn file_edges(sources: &[Source]) -> Graph {
    let known: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    // The longest known module that a path starts with.
    let resolve = |path: &[String]| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| known.contains(p))
            .map(|p| p.join("::"))
    };
    let mut edges = Graph::new();
    for source in sources {
        let me = source.module.join("::");
        // What `self` and `super` mean here.
        let this: Vec<String> = source.module.clone();
        let mut parent = source.module.clone();
        parent.pop();
        let children: BTreeSet<String> = source
            .code
            .lines()
            .filter_map(|l| {
                let l = l.trim().trim_start_matches("pub ");
                l.strip_prefix("mod ")?
                    .strip_suffix(';')
                    .map(str::to_string)
            })
            .collect();
        let code = &source.code;
        let mut targets = Vec::new();
        for (prefix, base) in [
            ("crate::", Vec::new()),
            ("super::", parent.clone()),
            ("self::", this.clone()),
        ] {
            for (at, _) in code.match_indices(prefix) {
                if code[..at].ends_with("::")
                    || code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    // Inside `mod column { use super::Column; }`, `super` is this file.
                    || (prefix != "crate::" && in_inline_module(code, at))
                {
                    continue;
                }
                for path in paths(code, at + prefix.len()) {
                    targets.push([base.clone(), path].concat());
                }
            }
        }
        if source.is_folder {
            for child in &children {
                let needle = format!("{child}::");
                for (at, _) in code.match_indices(&needle) {
                    let before = &code[..at];
                    if before.ends_with("::")
                        || before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    {
                        continue;
                    }
                    for path in paths(code, at) {
                        targets.push([this.clone(), path].concat());
                    }
                }
            }
        }
        for target in targets {
            if let Some(to) = resolve(&target)
                && to != me
            {
                edges.entry(me.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// The same edges between the top-level folders (and the root files).
fn folder_edges(files: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap().to_string();
    let mut edges = Graph::new();
    for (from, tos) in files {
        for to in tos {
            if top(from) != top(to) {
                edges.entry(top(from)).or_default().insert(top(to));
            }
        }
    }
    edges
}

/// A path from `start` back to itself, if there is one.
fn cycle_through(start: &str, edges: &Graph) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                return Some(path.clone());
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

fn cycles(edges: &Graph) -> Vec<String> {
    edges
        .keys()
        .filter_map(|m| cycle_through(m, edges))
        .map(|path| path.join(" → "))
        .collect()
}

#[test]
fn the_path_reader_reads_groups_and_nesting() {
    let text = "crate::engine::{plan::{self, Plan}, run::Run}, x";
    assert_eq!(
        paths(text, "crate::".len()),
        vec![
            vec!["engine", "plan"],
            vec!["engine", "plan", "Plan"],
            vec!["engine", "run", "Run"],
        ]
    );
}

#[test]
fn no_file_depends_on_itself() {
    let edges = file_edges(&sources());
    assert!(edges.len() > 50, "the walk found too few files: {edges:?}");
    // Edges the walk must see: a `crate::` path, a group, a `super::` one.
    assert!(
        edges["engine::plan"].contains("engine::topology"),
        "{:?}",
        edges["engine::plan"]
    );
    assert!(
        edges["components::ambient"].contains("components"),
        "{:?}",
        edges["components::ambient"]
    );
    // …and not a `super::` inside an inline module, which is the file itself.
    assert!(
        !edges["observe::facts"].contains("observe"),
        "{:?}",
        edges["observe::facts"]
    );
    // The check sees a cycle where there is one.
    let mut looped = edges.clone();
    looped
        .entry("model::mesh".into())
        .or_default()
        .insert("app".into());
    assert!(cycle_through("model::mesh", &looped).is_some());
    let cycles = cycles(&edges);
    assert!(cycles.is_empty(), "file cycles:\n{}", cycles.join("\n"));
}

#[test]
fn no_folder_depends_on_itself() {
    let edges = folder_edges(&file_edges(&sources()));
    for layer in [
        "app",
        "checks",
        "flows",
        "engine",
        "components",
        "observe",
        "tools",
        "model",
    ] {
        assert!(
            edges.contains_key(layer),
            "no edges from {layer}: {edges:?}"
        );
    }
    let mut looped = edges.clone();
    looped
        .entry("trust".into())
        .or_default()
        .insert("app".into());
    assert!(cycle_through("trust", &looped).is_some());
    let cycles = cycles(&edges);
    assert!(cycles.is_empty(), "folder cycles:\n{}", cycles.join("\n"));
}
