//! Which torch release the worker was built against and which libtorch it runs with. A worker
//! built against one release starts against another's libraries (a run path overridden by
//! LD_LIBRARY_PATH, another node's torch) and then fails every trial ("incoherent element sizes
//! in bytes"); `check` refuses that at start, naming both releases, both folders and the fix.
//!
//! The build's release is recorded by worker/build.rs (`CBSWEEP_TORCH_VERSION`); the loaded one
//! is read beside the libtorch_cpu.so this process mapped (/proc/self/maps): torch/version.py in
//! a wheel, build-version in a libtorch archive. Releases are compared by major.minor, the unit
//! tch is built for; another patch or build (+cpu, +cu130) of the same release is a warning.
//!
//! Only std here: worker/build.rs compiles this file too, to read the version with the same
//! parser (so its error is written out rather than derived with thiserror).

use std::fmt;
use std::path::{Path, PathBuf};

/// The torch release the binary was built against (worker/build.rs), e.g. "2.13.0+cu130".
const BUILT_VERSION: Option<&str> = option_env!("CBSWEEP_TORCH_VERSION");
/// The lib folder of the libtorch the binary was built against.
const BUILT_LIB: Option<&str> = option_env!("CBSWEEP_LIBTORCH_LIB");

/// The loaded libtorch is of another release than the one the binary was built against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    built: String,
    built_lib: PathBuf,
    loaded: String,
    loaded_lib: PathBuf,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (built, loaded) = (release_name(&self.built), release_name(&self.loaded));
        write!(
            f,
            "this worker was built against torch {} (libtorch in {}) but loaded libtorch {} from {}; it would fail every trial. \
             Rebuild it against this torch with scripts/build-against-torch.sh PYTHON (PYTHON: the interpreter whose torch is {loaded}), \
             or point the loader at torch {built}'s lib folder (LD_LIBRARY_PATH={})",
            self.built,
            self.built_lib.display(),
            self.loaded,
            self.loaded_lib.display(),
            self.built_lib.display(),
        )
    }
}

impl std::error::Error for Mismatch {}

/// Compares the loaded libtorch with the build's: Err when their releases differ; Ok(None) when
/// they are the same; Ok(Some(why)) when it cannot tell, or the patch or build differs (a
/// warning, not a refusal).
pub fn check() -> Result<Option<String>, Mismatch> {
    let Some(built) = BUILT_VERSION else { return Ok(Some("this binary's build recorded no torch version".into())) };
    let built_lib = PathBuf::from(BUILT_LIB.unwrap_or("(unknown)"));
    let maps = match std::fs::read_to_string("/proc/self/maps") {
        Ok(maps) => maps,
        Err(e) => return Ok(Some(format!("cannot read /proc/self/maps to find the loaded libtorch: {e}"))),
    };
    let Some(loaded_lib) = mapped_library(&maps, "libtorch_cpu.so") else {
        return Ok(Some("libtorch_cpu.so is not among this process's mappings".into()));
    };
    let loaded_dir = loaded_lib.parent().unwrap_or(Path::new("/")).to_owned();
    match version_beside(&loaded_dir) {
        Some(loaded) => compare(built, &built_lib, &loaded, &loaded_dir),
        // the build's own folder (e.g. conda's, which keeps no version file beside its lib)
        None if same_folder(&loaded_dir, &built_lib) => Ok(None),
        None => Ok(Some(format!(
            "the loaded libtorch ({}) has no version.py or build-version beside its lib folder; this worker was built against torch {built}",
            loaded_lib.display()
        ))),
    }
}

/// `built` against `loaded`: Err when major.minor differ, a warning when only the rest does.
pub(crate) fn compare(built: &str, built_lib: &Path, loaded: &str, loaded_lib: &Path) -> Result<Option<String>, Mismatch> {
    let mismatch = || Mismatch { built: built.into(), built_lib: built_lib.into(), loaded: loaded.into(), loaded_lib: loaded_lib.into() };
    match (release(built), release(loaded)) {
        (Some(b), Some(l)) if (b.0, b.1) != (l.0, l.1) => Err(mismatch()),
        (Some(_), Some(_)) if built == loaded => Ok(None),
        (Some(_), Some(_)) => Ok(Some(format!(
            "libtorch {loaded} from {} is not exactly the torch {built} this worker was built against (same release)",
            loaded_lib.display()
        ))),
        _ => Ok(Some(format!("cannot compare torch versions {built:?} (built) and {loaded:?} (loaded from {})", loaded_lib.display()))),
    }
}

/// The path of the file named `name` mapped into a process, from its /proc/PID/maps text
/// (`address perms offset dev inode path`, the path possibly with spaces or " (deleted)").
pub(crate) fn mapped_library(maps: &str, name: &str) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        let mut rest = line;
        for _ in 0..5 {
            rest = rest.trim_start().split_once(' ')?.1;
        }
        let path = rest.trim_start();
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        (path.starts_with('/') && Path::new(path).file_name().is_some_and(|f| f == name)).then(|| PathBuf::from(path))
    })
}

/// The files a torch install keeps its version in, given its lib folder: torch/version.py (a
/// wheel: the lib folder's parent is the package) and build-version (the libtorch archive).
pub(crate) fn version_files(lib_dir: &Path) -> [PathBuf; 2] {
    let top = lib_dir.parent().unwrap_or(lib_dir);
    [top.join("version.py"), top.join("build-version")]
}

/// The version of the torch whose lib folder is `lib_dir`, from `version_files`.
pub(crate) fn version_beside(lib_dir: &Path) -> Option<String> {
    let [py, plain] = version_files(lib_dir);
    std::fs::read_to_string(py)
        .ok()
        .and_then(|text| version_py(&text))
        .or_else(|| std::fs::read_to_string(plain).ok().map(|t| t.trim().to_owned()).filter(|v| release(v).is_some()))
}

/// `__version__` of a torch/version.py: `__version__ = '2.13.0+cu130'` (an annotation allowed).
pub(crate) fn version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("__version__")?;
        let value = rest.split_once('=')?.1.trim();
        let quote = value.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let inner = &value[1..];
        Some(inner[..inner.find(quote)?].to_owned())
    })
}

/// (major, minor, patch) of a version such as "2.13.0+cu130" or "2.11.0a0+git1234" (patch 0 when
/// absent); None when it does not start with major.minor.
pub(crate) fn release(version: &str) -> Option<(u32, u32, u32)> {
    let public = version.split('+').next()?;
    let mut parts = public.split('.');
    let number = |part: Option<&str>| -> Option<u32> {
        let part = part?;
        let digits = &part[..part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len())];
        digits.parse().ok()
    };
    let (major, minor) = (number(parts.next())?, number(parts.next())?);
    Some((major, minor, number(parts.next()).unwrap_or(0)))
}

/// "2.13" of "2.13.0+cu130"; the text itself when it is not a version.
fn release_name(version: &str) -> String {
    release(version).map_or_else(|| version.to_owned(), |(major, minor, _)| format!("{major}.{minor}"))
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
5581d4a00000-5581d4c00000 r--p 00000000 fd:01 1311 /work/target/release/cbsweep-worker
7f0a10000000-7f0a12000000 r-xp 00200000 fd:01 2621 /opt/torch 2.11/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so
7f0a12000000-7f0a12100000 r--p 00000000 fd:01 2622 /opt/torch/lib/libc10.so
7ffd3c1e0000-7ffd3c201000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn the_mapped_libtorch_is_found_with_spaces_in_its_path() {
        let lib = mapped_library(MAPS, "libtorch_cpu.so").unwrap();
        assert_eq!(lib, Path::new("/opt/torch 2.11/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so"));
        assert_eq!(mapped_library(MAPS, "libc10.so").unwrap(), Path::new("/opt/torch/lib/libc10.so"));
    }

    #[test]
    fn a_library_not_mapped_or_only_named_alike_is_not_found() {
        assert_eq!(mapped_library(MAPS, "libtorch.so"), None);
        assert_eq!(mapped_library("7f0a-7f0b r-xp 00000000 fd:01 9 /x/libtorch_cpu.so.bak\n", "libtorch_cpu.so"), None);
        assert_eq!(mapped_library("", "libtorch_cpu.so"), None);
        assert_eq!(mapped_library("garbage\n", "libtorch_cpu.so"), None);
    }

    #[test]
    fn a_deleted_mapping_still_names_its_file() {
        let maps = "7f0a-7f0b r-xp 00000000 fd:01 9                  /x/torch/lib/libtorch_cpu.so (deleted)\n";
        assert_eq!(mapped_library(maps, "libtorch_cpu.so").unwrap(), Path::new("/x/torch/lib/libtorch_cpu.so"));
    }

    #[test]
    fn version_py_of_a_wheel_is_read() {
        let text = "from typing import Optional\n\n__all__ = ['__version__', 'debug']\n__version__ = '2.11.0+cu130'\ndebug = False\n";
        assert_eq!(version_py(text).as_deref(), Some("2.11.0+cu130"));
        assert_eq!(version_py("__version__: str = \"2.13.0\"\n").as_deref(), Some("2.13.0"));
        assert_eq!(version_py("version = '2.13.0'\n"), None);
        assert_eq!(version_py("__version__ = get()\n"), None);
    }

    #[test]
    fn releases_are_parsed_with_their_local_part_and_pre_release_dropped() {
        assert_eq!(release("2.13.0+cu130"), Some((2, 13, 0)));
        assert_eq!(release("2.11.0a0+git70d99e9"), Some((2, 11, 0)));
        assert_eq!(release("2.11"), Some((2, 11, 0)));
        assert_eq!(release("nightly"), None);
    }

    #[test]
    fn another_release_is_refused_naming_both_versions_folders_and_the_fix() {
        let (built, loaded) = (Path::new("/w/.venv/torch/lib"), Path::new("/opt/torch211/torch/lib"));
        let e = compare("2.13.0+cu130", built, "2.11.0+cu130", loaded).unwrap_err().to_string();
        for part in ["torch 2.13.0+cu130", "libtorch 2.11.0+cu130", "/w/.venv/torch/lib", "/opt/torch211/torch/lib"] {
            assert!(e.contains(part), "{part:?} missing from {e}");
        }
        assert!(e.contains("scripts/build-against-torch.sh PYTHON") && e.contains("torch 2.13's lib folder"), "{e}");
    }

    #[test]
    fn the_same_release_passes_and_another_patch_or_build_only_warns() {
        let lib = Path::new("/t/lib");
        assert_eq!(compare("2.13.0+cu130", lib, "2.13.0+cu130", lib), Ok(None));
        assert!(compare("2.13.0+cu130", lib, "2.13.1+cpu", lib).unwrap().is_some());
        assert!(compare("2.13.0", lib, "unknown", lib).unwrap().is_some());
    }

    #[test]
    fn a_version_is_read_beside_a_wheels_lib_folder_or_a_libtorch_archives() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("torch");
        std::fs::create_dir_all(wheel.join("lib")).unwrap();
        std::fs::write(wheel.join("version.py"), "__version__ = '2.11.0+cu130'\n").unwrap();
        assert_eq!(version_beside(&wheel.join("lib")).as_deref(), Some("2.11.0+cu130"));
        let archive = dir.path().join("libtorch");
        std::fs::create_dir_all(archive.join("lib")).unwrap();
        std::fs::write(archive.join("build-version"), "2.13.0+cpu\n").unwrap();
        assert_eq!(version_beside(&archive.join("lib")).as_deref(), Some("2.13.0+cpu"));
        assert_eq!(version_beside(&dir.path().join("nothing/lib")), None);
    }

    /// The test binary links the libtorch it was built against, so the check passes.
    #[test]
    fn this_process_runs_with_the_libtorch_it_was_built_against() {
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(check(), Ok(None), "built against {BUILT_VERSION:?} in {BUILT_LIB:?}");
    }
}
