//! Typed policy errors: every one names the file, and where it can, the line, column and key.
//!
//! Platform teams read these in CI logs and in the status page after a failed reload, so
//! the message must point at the exact spot to fix without opening a debugger.

use std::fmt;
use std::path::PathBuf;

/// Where in a policy file a problem sits (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// Turns a byte offset into `src` into a 1-based line and column (columns count chars).
    pub fn from_offset(src: &str, offset: usize) -> Location {
        let offset = offset.min(src.len());
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

/// A policy was refused. The running policy (if any) stays in force.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read policy: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse, or did not fit the schema (unknown key, wrong type).
    #[error("{}", Pretty(self))]
    Syntax {
        file: PathBuf,
        at: Option<Location>,
        key: Option<String>,
        message: String,
    },
    /// The TOML fit the schema but a value is out of range or inconsistent.
    #[error("{}", Pretty(self))]
    Invalid {
        file: PathBuf,
        at: Option<Location>,
        key: String,
        message: String,
    },
}

impl PolicyError {
    /// The file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            PolicyError::Io { file, .. }
            | PolicyError::Syntax { file, .. }
            | PolicyError::Invalid { file, .. } => file,
        }
    }

    /// The line the error points at, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Io { .. } => None,
            PolicyError::Syntax { at, .. } | PolicyError::Invalid { at, .. } => {
                at.as_ref().map(|l| l.line)
            }
        }
    }

    /// The dotted key the error is about, when known (e.g. `route[1].slo.p95_ms`).
    pub fn key(&self) -> Option<&str> {
        match self {
            PolicyError::Io { .. } => None,
            PolicyError::Syntax { key, .. } => key.as_deref(),
            PolicyError::Invalid { key, .. } => Some(key),
        }
    }
}

/// Renders `file:line:column: key `k`: message`, the shape compilers and linters use, so
/// editors and CI annotations can jump to it.
struct Pretty<'a>(&'a PolicyError);

impl fmt::Display for Pretty<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, at, key, message) = match self.0 {
            PolicyError::Syntax {
                file,
                at,
                key,
                message,
            } => (file, at, key.as_deref(), message),
            PolicyError::Invalid {
                file,
                at,
                key,
                message,
            } => (file, at, Some(key.as_str()), message),
            PolicyError::Io { .. } => unreachable!("Io has its own message"),
        };
        write!(f, "{}", file.display())?;
        if let Some(at) = at {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        if let Some(key) = key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_columns() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(
            Location::from_offset(src, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::from_offset(src, 6),
            Location { line: 2, column: 1 }
        );
        assert_eq!(
            Location::from_offset(src, 9),
            Location { line: 2, column: 4 }
        );
        assert_eq!(Location::from_offset(src, 999).line, 3);
    }

    #[test]
    fn message_names_file_line_and_key() {
        let e = PolicyError::Invalid {
            file: "p.toml".into(),
            at: Some(Location { line: 7, column: 3 }),
            key: "route[0].slo.p95_ms".into(),
            message: "must be > 0".into(),
        };
        assert_eq!(
            e.to_string(),
            "p.toml:7:3: key `route[0].slo.p95_ms`: must be > 0"
        );
    }
}
