//! Finding the workspace's programs: `raftnode` for every dev cluster, and any other program of
//! the workspace a test runs (the same rules, another name).
//!
//! In order:
//!
//! 1. the environment variable (`RAFTNODE_BIN`), when it is set: that path and nothing else
//!    (an explicit choice that does not exist is an error, never a silent fallback);
//! 2. beside the running program (`target/release/microblog` runs `target/release/raftnode`;
//!    `raftnode up` finds itself);
//! 3. for a test binary, which cargo puts in `target/<profile>/deps/`, in the directory above it;
//! 4. on `PATH`, except for a test binary: a test runs the program its own build made, never an
//!    older one that happens to be installed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A program of the workspace and how to get it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// The file name (without the platform's executable suffix).
    pub name: &'static str,
    /// The environment variable that names the file to run instead.
    pub env_var: &'static str,
    /// The cargo package that builds it (for the hint when it is missing).
    pub package: &'static str,
}

/// The program was in none of the places looked at.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {name} program was not found ({}); build it with `cargo build -p {package}` (or set \
     {env_var} to its path)",
    looked.join("; ")
)]
pub struct ProgramNotFound {
    /// The program.
    pub name: String,
    /// Its package.
    pub package: String,
    /// Its environment variable.
    pub env_var: String,
    /// Every place looked at, and why it did not do.
    pub looked: Vec<String>,
}

impl Program {
    /// The node program.
    pub const RAFTNODE: Program = Program {
        name: "raftnode",
        env_var: "RAFTNODE_BIN",
        package: "raftnode",
    };

    /// Finds the program (see the module docs for where it looks).
    pub fn find(&self) -> Result<PathBuf, ProgramNotFound> {
        self.locate(
            std::env::var_os(self.env_var),
            std::env::current_exe().ok(),
            std::env::var_os("PATH"),
            Path::is_file,
        )
    }

    /// [`Program::find`] over the given environment (tests give their own).
    fn locate(
        &self,
        from_env: Option<OsString>,
        current_exe: Option<PathBuf>,
        path_var: Option<OsString>,
        is_file: impl Fn(&Path) -> bool,
    ) -> Result<PathBuf, ProgramNotFound> {
        let mut looked = Vec::new();
        let not_found = |looked: Vec<String>| ProgramNotFound {
            name: self.name.to_string(),
            package: self.package.to_string(),
            env_var: self.env_var.to_string(),
            looked,
        };
        if let Some(chosen) = from_env.filter(|v| !v.is_empty()) {
            let chosen = PathBuf::from(chosen);
            if is_file(&chosen) {
                return Ok(chosen);
            }
            looked.push(format!("{}={} is no file", self.env_var, chosen.display()));
            return Err(not_found(looked));
        }
        let file_name = format!("{}{}", self.name, std::env::consts::EXE_SUFFIX);
        let exe_dir = current_exe.as_deref().and_then(Path::parent);
        let in_deps = exe_dir.is_some_and(|d| d.file_name().is_some_and(|n| n == "deps"));
        match exe_dir {
            Some(dir) => {
                let mut candidates = vec![dir.join(&file_name)];
                if in_deps && let Some(above) = dir.parent() {
                    candidates.push(above.join(&file_name));
                }
                for candidate in candidates {
                    if is_file(&candidate) {
                        return Ok(candidate);
                    }
                    looked.push(format!("not at {}", candidate.display()));
                }
            }
            None => looked.push("the running program's own path is unknown".into()),
        }
        if in_deps {
            looked.push("PATH is not searched for a test".into());
            return Err(not_found(looked));
        }
        let on_path = path_var.as_ref().and_then(|p| {
            std::env::split_paths(p)
                .map(|dir| dir.join(&file_name))
                .find(|candidate| is_file(candidate))
        });
        on_path.ok_or_else(|| {
            looked.push("not on PATH".into());
            not_found(looked)
        })
    }
}

/// The `raftnode` program (see [`Program::find`]).
pub fn raftnode_bin() -> Result<PathBuf, ProgramNotFound> {
    Program::RAFTNODE.find()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn exe(name: &str) -> String {
        format!("{name}{}", std::env::consts::EXE_SUFFIX)
    }

    /// `locate` over a made-up file system holding `files`.
    fn locate(
        from_env: Option<&str>,
        current_exe: &str,
        path_var: &str,
        files: &[&str],
    ) -> Result<PathBuf, ProgramNotFound> {
        let files: BTreeSet<PathBuf> = files.iter().map(PathBuf::from).collect();
        Program::RAFTNODE.locate(
            from_env.map(OsString::from),
            Some(PathBuf::from(current_exe)),
            Some(OsString::from(path_var)),
            |p| files.contains(p),
        )
    }

    #[test]
    fn the_environment_variable_wins_and_is_never_second_guessed() {
        let beside = format!("/t/release/{}", exe("raftnode"));
        let found = locate(
            Some("/opt/rn"),
            "/t/release/microblog",
            "",
            &["/opt/rn", &beside],
        );
        assert_eq!(found.unwrap(), PathBuf::from("/opt/rn"));
        let err = locate(Some("/opt/gone"), "/t/release/microblog", "", &[&beside]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("RAFTNODE_BIN=/opt/gone is no file") && text.contains("cargo build"),
            "{text}"
        );
        // Set but empty counts as unset.
        let found = locate(Some(""), "/t/release/microblog", "", &[&beside]);
        assert_eq!(found.unwrap(), PathBuf::from(beside));
    }

    #[test]
    fn beside_the_program_then_path() {
        let beside = format!("/t/release/{}", exe("raftnode"));
        let on_path = format!("/usr/bin/{}", exe("raftnode"));
        let both = [beside.as_str(), on_path.as_str()];
        let found = locate(None, "/t/release/microblog", "/bin:/usr/bin", &both);
        assert_eq!(found.unwrap(), PathBuf::from(&beside));
        let found = locate(None, "/t/release/microblog", "/bin:/usr/bin", &[&on_path]);
        assert_eq!(found.unwrap(), PathBuf::from(&on_path));
        let err = locate(None, "/t/release/microblog", "/bin", &[&on_path]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("not at {beside}")) && text.contains("not on PATH"),
            "{text}"
        );
    }

    #[test]
    fn a_test_binary_takes_its_own_build_and_never_path() {
        let built = format!("/t/debug/{}", exe("raftnode"));
        let on_path = format!("/usr/bin/{}", exe("raftnode"));
        let test = "/t/debug/deps/cluster-0123abcd";
        let found = locate(None, test, "/usr/bin", &[&built, &on_path]);
        assert_eq!(found.unwrap(), PathBuf::from(&built));
        let err = locate(None, test, "/usr/bin", &[&on_path]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("not at {built}"))
                && text.contains("PATH is not searched for a test"),
            "{text}"
        );
    }
}
