//! Path confinement for task inputs and outputs.
//!
//! With `--data-root DIR` (repeatable, or `ASTROWORKER_DATA_ROOTS=a:b`), every path a task reads
//! or writes must resolve — after `..` and symbolic links — to a location inside one of the
//! roots. Without roots, paths are unconfined and the worker says so once at start-up.
//! Task paths must be absolute, as Celery producers on another machine cannot mean anything
//! else.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0:?} is not absolute")]
    NotAbsolute(PathBuf),
    #[error("path {path:?} is outside the allowed data roots ({roots})")]
    OutsideRoots { path: PathBuf, roots: String },
    #[error("data root {0:?} does not exist or is not a directory")]
    BadRoot(PathBuf),
    #[error("invalid glob pattern {pattern:?}: {reason}")]
    Glob { pattern: String, reason: String },
    #[error("no files match {0:?}")]
    NoMatch(String),
}

/// The roots task paths must stay within (empty: unconfined).
#[derive(Debug, Clone, Default)]
pub struct DataRoots {
    roots: Vec<PathBuf>,
}

impl DataRoots {
    /// Canonicalises each root; each must be an existing directory.
    pub fn new(roots: &[PathBuf]) -> Result<Self, PathError> {
        let roots = roots
            .iter()
            .map(|r| {
                r.canonicalize()
                    .ok()
                    .filter(|c| c.is_dir())
                    .ok_or_else(|| PathError::BadRoot(r.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { roots })
    }

    /// Roots from `ASTROWORKER_DATA_ROOTS` (colon-separated) plus `extra`.
    pub fn from_env_and(extra: &[PathBuf]) -> Result<Self, PathError> {
        let mut all: Vec<PathBuf> = std::env::var_os("ASTROWORKER_DATA_ROOTS")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        all.extend_from_slice(extra);
        Self::new(&all)
    }

    pub fn is_confined(&self) -> bool {
        !self.roots.is_empty()
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Checks a path a task will read. Returns the path as given (not canonicalised, so
    /// names in results and logs are the caller's).
    pub fn input(&self, path: &Path) -> Result<PathBuf, PathError> {
        self.check(path)?;
        Ok(path.to_path_buf())
    }

    /// Checks a path a task will write: its parent must resolve inside a root (the file itself
    /// may not exist yet; if it exists and is a symlink, its target must be inside too).
    pub fn output(&self, path: &Path) -> Result<PathBuf, PathError> {
        self.check(path)?;
        Ok(path.to_path_buf())
    }

    fn check(&self, path: &Path) -> Result<(), PathError> {
        if !path.is_absolute() {
            return Err(PathError::NotAbsolute(path.to_path_buf()));
        }
        if !self.is_confined() {
            return Ok(());
        }
        let resolved = resolve(path);
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(())
        } else {
            Err(PathError::OutsideRoots {
                path: path.to_path_buf(),
                roots: self
                    .roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    /// Expands a list of paths or one glob pattern (`*`, `?`, `[...]`) into sorted existing
    /// files, each checked as an input.
    pub fn expand_inputs(&self, inputs: &[String]) -> Result<Vec<PathBuf>, PathError> {
        let mut out = Vec::new();
        for item in inputs {
            let looks_like_glob =
                item.contains(['*', '?']) || (item.contains('[') && !Path::new(item).exists());
            if looks_like_glob {
                let pattern_path = Path::new(item);
                if !pattern_path.is_absolute() {
                    return Err(PathError::NotAbsolute(pattern_path.to_path_buf()));
                }
                let mut matched: Vec<PathBuf> = glob::glob(item)
                    .map_err(|e| PathError::Glob {
                        pattern: item.clone(),
                        reason: e.to_string(),
                    })?
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect();
                if matched.is_empty() {
                    return Err(PathError::NoMatch(item.clone()));
                }
                matched.sort();
                for p in matched {
                    out.push(self.input(&p)?);
                }
            } else {
                out.push(self.input(Path::new(item))?);
            }
        }
        Ok(out)
    }
}

/// Resolves `..` and symlinks as far as the path exists, then appends the remaining
/// components lexically (for outputs that do not exist yet).
fn resolve(path: &Path) -> PathBuf {
    let lexical = normalize_lexically(path);
    let mut existing = lexical.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(canon) = existing.canonicalize() {
            let mut full = canon;
            for part in rest.iter().rev() {
                full.push(part);
            }
            return full;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let outside = tmp.path().join("secret");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f.fit"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let roots = DataRoots::new(std::slice::from_ref(&root)).unwrap();

        assert!(roots.input(&root.join("sub/a.fit")).is_ok());
        assert!(roots.output(&root.join("new/dir/out.fit")).is_ok());
        assert!(matches!(
            roots.input(&root.join("../secret/f.fit")),
            Err(PathError::OutsideRoots { .. })
        ));
        assert!(matches!(
            roots.input(&root.join("link/f.fit")),
            Err(PathError::OutsideRoots { .. })
        ));
        assert!(matches!(
            roots.output(&root.join("link/new.fit")),
            Err(PathError::OutsideRoots { .. })
        ));
        assert_eq!(
            roots.input(Path::new("relative.fit")),
            Err(PathError::NotAbsolute("relative.fit".into()))
        );
        assert!(DataRoots::new(&[tmp.path().join("missing")]).is_err());
        let open = DataRoots::default();
        assert!(open.input(&outside.join("f.fit")).is_ok());
    }

    #[test]
    fn globs_are_sorted_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "Light_2.fit",
            "Light_1.fit",
            "Dark_1.fit",
            "Light 3 [x].fit",
        ] {
            std::fs::write(tmp.path().join(name), b"x").unwrap();
        }
        let roots = DataRoots::new(&[tmp.path().to_path_buf()]).unwrap();
        let pattern = format!("{}/Light_*.fit", tmp.path().display());
        let got = roots.expand_inputs(&[pattern]).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["Light_1.fit", "Light_2.fit"]);
        // A literal name with brackets that exists is taken as a path, not a pattern.
        let literal = tmp.path().join("Light 3 [x].fit");
        assert_eq!(
            roots
                .expand_inputs(&[literal.display().to_string()])
                .unwrap(),
            [literal]
        );
        assert!(matches!(
            roots.expand_inputs(&[format!("{}/none*.fit", tmp.path().display())]),
            Err(PathError::NoMatch(_))
        ));
    }
}
