//! Import circles between the files of each crate: modules that use one another, directly or
//! around a loop. A module's edges are its `use` declarations and the paths (`crate::a::b`,
//! `super::x`, `child::f`) in its code, never in comments or strings; `mod child;` only declares
//! and is no edge, so a child using its parent's items is the ordinary shape, and a parent that
//! also uses the child closes a circle. An edge to an item goes to the module that defines it,
//! following re-exports (`pub use`, so a crate root's re-exports tie nothing), and a re-export
//! is an edge of its own module only where that module also names the item in its code.
//! Files are found from each crate's root (src/lib.rs, src/main.rs) through `mod` declarations,
//! `#[path]` included. An inline module (`mod fma { .. }`) resolves names as a module but counts
//! as part of its file; code under `#[cfg(test)]` makes no edges and receives none (tests drive
//! a crate from outside its layering).
//! Knows std only: a hand-written lexer, not a parser, which is enough for paths and `use` trees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that import each other, with what ties them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circle {
    /// The files, sorted: `worker/src/a.rs <-> worker/src/b.rs`.
    pub key: String,
    /// One edge a line: `a.rs -> b.rs: super::X, b::f`.
    pub ties: Vec<String>,
}

impl std::fmt::Display for Circle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "import circle {}:", self.key)?;
        for t in &self.ties {
            write!(f, "\n    {t}")?;
        }
        Ok(())
    }
}

/// The import circles of every crate whose root is `root` or a folder just under it (a
/// `src/lib.rs` or `src/main.rs`), sorted by key.
pub fn import_circles(root: &Path) -> Vec<Circle> {
    let mut dirs = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        let mut subs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        subs.sort();
        dirs.extend(subs.into_iter().filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !(name.starts_with("target") || name.starts_with('.'))
        }));
    }
    let mut circles = Vec::new();
    for dir in dirs {
        for entry in ["src/lib.rs", "src/main.rs"] {
            let file = dir.join(entry);
            if file.is_file() {
                let mut krate = Crate::default();
                krate.load(&file, None, String::new(), true);
                circles.extend(krate.circles(root));
            }
        }
    }
    circles.sort_by(|a, b| a.key.cmp(&b.key));
    circles
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// `::`
    Sep,
    Punct(char),
}

/// Tokens of Rust source without comments; string literals keep their text (for `#[path]`).
fn lex(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            let start = i + 1;
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            out.push(Tok::Str(c[start..i.min(c.len())].iter().collect()));
            i += 1;
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1; // a lifetime: its name follows as an identifier
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // raw strings: r"..", r#".."#, br#".."#, cr".."
            let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                i += hashes + 1;
                let start = i;
                while i < c.len() && !(c[i] == '"' && c[i + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes) {
                    i += 1;
                }
                out.push(Tok::Str(c[start..i.min(c.len())].iter().collect()));
                i += 1 + hashes;
            } else if !matches!(word.as_str(), "b" | "c") || !matches!(at(i), '"' | '\'') {
                out.push(Tok::Ident(word));
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Tok::Sep);
            i += 2;
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// One leaf of a `use` tree: the path as written and the name it binds (`None`: a glob).
#[derive(Debug, Clone)]
struct Use {
    path: Vec<String>,
    name: Option<String>,
    public: bool,
}

#[derive(Debug, Default)]
struct Module {
    /// The file, relative to the workspace once reported.
    label: String,
    parent: Option<usize>,
    /// The module of the file it is written in: itself, or the file's for an inline module.
    file: usize,
    /// Under `#[cfg(test)]`: tests drive a crate from outside its layering, so their imports
    /// are no edges, nor imports of them.
    test_only: bool,
    children: BTreeMap<String, usize>,
    /// Items defined at the module's top level (fn, struct, enum, trait, type, const, static, ...).
    items: BTreeSet<String>,
    uses: Vec<Use>,
    /// Paths of two or more segments in the module's code outside `use` declarations.
    paths: Vec<Vec<String>>,
    /// Every identifier in the module's code outside `use` declarations.
    idents: BTreeSet<String>,
}

#[derive(Default)]
struct Crate {
    modules: Vec<Module>,
}

enum Res {
    Module(usize),
    Item(usize),
}

fn is_ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

impl Crate {
    /// Reads `file` as a new module under `parent` and, through its `mod` declarations, every
    /// file below it. `owns_dir`: the file is a crate root or a mod.rs, whose children sit beside it.
    fn load(&mut self, file: &Path, parent: Option<usize>, name: String, owns_dir: bool) {
        let Ok(src) = std::fs::read_to_string(file) else { return };
        let test_only = parent.is_some_and(|p| self.modules[p].test_only);
        let id = self.new_module(parent, name, file.display().to_string(), test_only);
        let base = if owns_dir { file.parent().unwrap().to_path_buf() } else { file.with_extension("") };
        let toks = lex(&src);
        // (module, brace depth of its body, folder its declared children live in)
        let mut stack: Vec<(usize, usize, PathBuf)> = vec![(id, 0, base)];
        let mut depth = 0usize;
        // the attributes standing before the next item: `#[path = ".."]`, `#[cfg(test)]`
        let mut path_attr: Option<String> = None;
        let mut cfg_test = false;
        let mut i = 0;
        while i < toks.len() {
            let (m, body_depth, dir) = stack.last().cloned().unwrap();
            if matches!(toks[i], Tok::Punct('{' | '}' | ';')) {
                (path_attr, cfg_test) = (None, false);
            }
            match &toks[i] {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    if depth == body_depth && stack.len() > 1 {
                        stack.pop();
                    }
                    depth = depth.saturating_sub(1);
                }
                Tok::Punct('#') => {
                    // an attribute: remember `#[path = ".."]` and `#[cfg(test)]` for the `mod` it stands on
                    let mut j = i + 1;
                    if toks.get(j) == Some(&Tok::Punct('!')) {
                        j += 1;
                    }
                    if toks.get(j) == Some(&Tok::Punct('[')) {
                        let mut nest = 0;
                        let start = j;
                        while j < toks.len() {
                            match toks[j] {
                                Tok::Punct('[') => nest += 1,
                                Tok::Punct(']') => {
                                    nest -= 1;
                                    if nest == 0 {
                                        break;
                                    }
                                }
                                _ => {}
                            }
                            j += 1;
                        }
                        match &toks[start..=j.min(toks.len() - 1)] {
                            [Tok::Punct('['), Tok::Ident(p), Tok::Punct('='), Tok::Str(s), Tok::Punct(']')] if p == "path" => {
                                path_attr = Some(s.clone())
                            }
                            [Tok::Punct('['), Tok::Ident(c), Tok::Punct('('), Tok::Ident(t), Tok::Punct(')'), Tok::Punct(']')] => {
                                cfg_test |= c == "cfg" && t == "test"
                            }
                            _ => {}
                        }
                        i = j + 1;
                        continue;
                    }
                }
                Tok::Ident(word) if word == "mod" => {
                    if let Some(name) = is_ident(toks.get(i + 1)) {
                        let name = name.to_string();
                        match toks.get(i + 2) {
                            Some(Tok::Punct(';')) => {
                                let (child, owns) = match path_attr.take() {
                                    Some(p) if stack.len() == 1 => (file.parent().unwrap().join(p), true),
                                    Some(p) => (dir.join(p), true),
                                    None if dir.join(format!("{name}.rs")).is_file() => (dir.join(format!("{name}.rs")), false),
                                    None => (dir.join(&name).join("mod.rs"), true),
                                };
                                let before = self.modules.len();
                                self.load(&child, Some(m), name, owns);
                                if cfg_test && before < self.modules.len() {
                                    self.mark_test_only(before);
                                }
                                cfg_test = false;
                                i += 3;
                                continue;
                            }
                            Some(Tok::Punct('{')) => {
                                let test_only = cfg_test || self.modules[m].test_only;
                                (path_attr, cfg_test) = (None, false);
                                let label = self.modules[id].label.clone();
                                let inline = self.new_module(Some(m), name.clone(), label, test_only);
                                self.modules[inline].file = id;
                                depth += 1;
                                stack.push((inline, depth, dir.join(&name)));
                                i += 3;
                                continue;
                            }
                            _ => {}
                        }
                    }
                }
                Tok::Ident(word) if word == "use" => {
                    let public = match toks.get(i.wrapping_sub(1)) {
                        Some(Tok::Ident(p)) => p == "pub",
                        Some(Tok::Punct(')')) => {
                            toks[..i].iter().rev().skip_while(|t| **t != Tok::Punct('(')).nth(1) == Some(&Tok::Ident("pub".into()))
                        }
                        _ => false,
                    };
                    let mut j = i + 1;
                    let mut leaves = Vec::new();
                    parse_use_tree(&toks, &mut j, Vec::new(), &mut leaves);
                    while j < toks.len() && toks[j] != Tok::Punct(';') {
                        j += 1;
                    }
                    self.modules[m].uses.extend(leaves.into_iter().map(|(path, name)| Use { path, name, public }));
                    (path_attr, cfg_test) = (None, false);
                    i = j + 1;
                    continue;
                }
                Tok::Ident(word) => {
                    let top = depth == body_depth;
                    const ITEMS: &[&str] = &["fn", "struct", "enum", "trait", "type", "const", "static", "union", "macro_rules"];
                    if top && ITEMS.contains(&word.as_str()) {
                        let k = if word == "macro_rules" { i + 2 } else { i + 1 };
                        if let Some(name) = is_ident(toks.get(k)) {
                            self.modules[m].items.insert(name.to_string());
                        }
                    }
                    self.modules[m].idents.insert(word.clone());
                    if toks.get(i.wrapping_sub(1)) != Some(&Tok::Sep) && toks.get(i + 1) == Some(&Tok::Sep) {
                        let mut segs = vec![word.clone()];
                        let mut j = i + 1;
                        while toks.get(j) == Some(&Tok::Sep) {
                            let Some(next) = is_ident(toks.get(j + 1)) else { break };
                            segs.push(next.to_string());
                            j += 2;
                        }
                        if segs.len() > 1 {
                            self.modules[m].paths.push(segs);
                        }
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn new_module(&mut self, parent: Option<usize>, name: String, label: String, test_only: bool) -> usize {
        let id = self.modules.len();
        self.modules.push(Module { label, parent, file: id, test_only, ..Module::default() });
        if let Some(p) = parent {
            self.modules[p].children.insert(name, id);
        }
        id
    }

    /// Marks module `first` and every module loaded after it (its descendants) as test-only.
    fn mark_test_only(&mut self, first: usize) {
        for m in &mut self.modules[first..] {
            m.test_only = true;
        }
    }

    /// The module that defines what `segs`, written in module `m`, names; `None` for another
    /// crate, the prelude or a local name.
    fn resolve(&self, m: usize, segs: &[String], seen: &mut BTreeSet<(usize, String, bool)>) -> Option<Res> {
        if segs.is_empty() {
            return None;
        }
        let (mut cur, rest) = match segs[0].as_str() {
            "crate" => (0, &segs[1..]),
            "self" => (m, &segs[1..]),
            "super" => (self.modules[m].parent?, &segs[1..]),
            first => match self.lookup(m, first, segs.len() > 1, seen)? {
                Res::Module(x) => (x, &segs[1..]),
                item => return Some(item),
            },
        };
        for (k, seg) in rest.iter().enumerate() {
            match seg.as_str() {
                "super" => cur = self.modules[cur].parent?,
                "self" => {}
                _ => match self.lookup(cur, seg, k + 1 < rest.len(), seen) {
                    Some(Res::Module(x)) => cur = x,
                    Some(item) => return Some(item),
                    None => return Some(Res::Item(cur)),
                },
            }
        }
        Some(Res::Module(cur))
    }

    /// `name` in module `m`'s scope: a child module, an item, or a name a `use` brings in
    /// (a glob's module searched last). `module_first`: more segments follow, so a module or a
    /// type is meant (a module and a function may share a name).
    /// `seen`: the names already looked up for this question, so a loop of globs or
    /// re-exports ends, and each scope is searched once.
    fn lookup(&self, m: usize, name: &str, module_first: bool, seen: &mut BTreeSet<(usize, String, bool)>) -> Option<Res> {
        if !seen.insert((m, name.to_string(), module_first)) {
            return None;
        }
        let module = &self.modules[m];
        let child = module.children.get(name).map(|&c| Res::Module(c));
        if module_first && child.is_some() {
            return child;
        }
        if module.items.contains(name) {
            return Some(Res::Item(m));
        }
        if let Some(u) = module.uses.iter().find(|u| u.name.as_deref() == Some(name)) {
            return self.resolve(m, &u.path, seen);
        }
        if child.is_some() {
            return child;
        }
        for u in module.uses.iter().filter(|u| u.name.is_none()) {
            if let Some(Res::Module(g)) = self.resolve(m, &u.path, seen)
                && g != m
                && let Some(r) = self.lookup(g, name, module_first, seen)
            {
                return Some(r);
            }
        }
        None
    }

    fn defining(&self, m: usize, segs: &[String]) -> Option<usize> {
        match self.resolve(m, segs, &mut BTreeSet::new())? {
            Res::Module(x) | Res::Item(x) => Some(x),
        }
    }

    /// Edges between modules, each with the paths that make it.
    fn edges(&self) -> BTreeMap<(usize, usize), BTreeSet<String>> {
        let mut edges: BTreeMap<(usize, usize), BTreeSet<String>> = BTreeMap::new();
        for (m, module) in self.modules.iter().enumerate().filter(|(_, module)| !module.test_only) {
            let mut add = |segs: &[String], written: String| {
                if let Some(d) = self.defining(m, segs)
                    && !self.modules[d].test_only
                    && module.file != self.modules[d].file
                {
                    edges.entry((module.file, self.modules[d].file)).or_default().insert(written);
                }
            };
            for u in &module.uses {
                let named_here = match &u.name {
                    None => !u.public,
                    Some(n) => !u.public || module.idents.contains(n),
                };
                if named_here {
                    let glob = if u.name.is_none() { "::*" } else { "" };
                    add(&u.path, format!("use {}{glob}", u.path.join("::")));
                }
            }
            for p in &module.paths {
                add(p, p.join("::"));
            }
        }
        edges
    }

    fn circles(&self, root: &Path) -> Vec<Circle> {
        let edges = self.edges();
        let n = self.modules.len();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &(a, b) in edges.keys() {
            next[a].push(b);
        }
        let label = |m: usize| {
            let l = &self.modules[m].label;
            let prefix = format!("{}/", root.display());
            l.strip_prefix(&prefix).unwrap_or(l).to_string()
        };
        strongly_connected(&next)
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|members| {
                let set: BTreeSet<usize> = members.iter().copied().collect();
                let mut labels: Vec<String> = members.iter().map(|&m| label(m)).collect();
                labels.sort();
                let ties = edges
                    .iter()
                    .filter(|((a, b), _)| set.contains(a) && set.contains(b))
                    .map(|((a, b), names)| {
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        format!("{} -> {}: {}", label(*a), label(*b), names.join(", "))
                    })
                    .collect();
                Circle { key: labels.join(" <-> "), ties }
            })
            .collect()
    }
}

/// Parses one `use` tree from `toks[*i]`, pushing each leaf's full path and bound name.
fn parse_use_tree(toks: &[Tok], i: &mut usize, mut path: Vec<String>, out: &mut Vec<(Vec<String>, Option<String>)>) {
    if toks.get(*i) == Some(&Tok::Sep) {
        *i += 1; // a leading `::`: another crate
        path.push(String::new());
    }
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                *i += 1;
                if toks.get(*i) == Some(&Tok::Sep) {
                    *i += 1;
                    continue;
                }
                let mut name = path.last().cloned();
                if path.last().map(String::as_str) == Some("self") {
                    path.pop();
                    name = path.last().cloned();
                }
                if toks.get(*i) == Some(&Tok::Ident("as".into())) {
                    name = is_ident(toks.get(*i + 1)).map(String::from);
                    *i += 2;
                }
                out.push((path, name));
                return;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                out.push((path, None));
                return;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                while *i < toks.len() {
                    match toks[*i] {
                        Tok::Punct('}') => {
                            *i += 1;
                            return;
                        }
                        Tok::Punct(',') => *i += 1,
                        _ => {
                            let before = *i;
                            parse_use_tree(toks, i, path.clone(), out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                return;
            }
            _ => return,
        }
    }
}

/// Tarjan's strongly connected components of the graph `next` (node -> successors).
fn strongly_connected(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for k in 0..s.next[v].len() {
            let w = s.next[v][k];
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let n = next.len();
    let mut s =
        State { next, index: vec![None; n], low: vec![0; n], on_stack: vec![false; n], stack: Vec::new(), counter: 0, out: Vec::new() };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}
