//! The password file, `~/.pgpass` or `PGPASSFILE`, read as libpq reads it.
//!
//! Each line is `hostname:port:database:username:password`; `*` alone matches anything in
//! the first four fields, `\:` and `\\` stand for `:` and `\`, and lines starting with `#`
//! are comments. The first matching line wins.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What one connection attempt looks up in the password file.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// Host names that the first field may equal. For a Unix-socket host, that is the
    /// socket folder and `localhost`, as libpq matches the default socket with `localhost`.
    pub hosts: &'a [&'a str],
    pub port: &'a str,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The password of the first line of `contents` that matches, if any.
pub fn lookup(contents: &str, wanted: &Lookup<'_>) -> Option<String> {
    contents.lines().find_map(|line| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let fields = split(line);
        let [host, port, dbname, user, password, ..] = fields.as_slice() else {
            return None;
        };
        let matches = host.matches_any(wanted.hosts)
            && port.matches(wanted.port)
            && dbname.matches(wanted.dbname)
            && user.matches(wanted.user);
        matches.then(|| password.text.clone())
    })
}

/// One field of a line, unescaped.
struct Field {
    text: String,
    /// The field was an unescaped `*`.
    wildcard: bool,
}

impl Field {
    fn matches(&self, value: &str) -> bool {
        self.wildcard || self.text == value
    }

    fn matches_any(&self, values: &[&str]) -> bool {
        self.wildcard || values.contains(&self.text.as_str())
    }
}

/// Splits a line at unescaped colons, removing the escapes.
fn split(line: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut text = String::new();
    let mut raw = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                raw.push(c);
                if let Some(next) = chars.next() {
                    raw.push(next);
                    text.push(next);
                }
            }
            ':' => {
                fields.push(Field {
                    wildcard: raw == "*",
                    text: std::mem::take(&mut text),
                });
                raw.clear();
            }
            c => {
                raw.push(c);
                text.push(c);
            }
        }
    }
    fields.push(Field {
        wildcard: raw == "*",
        text,
    });
    fields
}

/// The password file's contents, or `None` when it is missing, unreadable, not a plain file,
/// or readable by others than its owner (then with a warning, as libpq gives).
pub(crate) fn read(path: &Path) -> Option<String> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!("cannot read the password file {}: {error}", path.display());
            return None;
        }
    };
    if !metadata.is_file() {
        tracing::warn!("password file {} is not a plain file", path.display());
        return None;
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access; permissions should be u=rw (0600) \
             or less; ignoring it",
            path.display()
        );
        return None;
    }
    match fs::read_to_string(path) {
        Ok(contents) => Some(contents),
        Err(error) => {
            tracing::warn!("cannot read the password file {}: {error}", path.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(
        contents: &str,
        hosts: &[&str],
        port: &str,
        dbname: &str,
        user: &str,
    ) -> Option<String> {
        lookup(
            contents,
            &Lookup {
                hosts,
                port,
                dbname,
                user,
            },
        )
    }

    #[test]
    fn first_matching_line_wins_with_wildcards() {
        let file = "# comment\n\
                    db.example.com:5432:shop:app:first\n\
                    *:5432:*:app:second\n\
                    *:*:*:*:any\n";
        assert_eq!(
            find(file, &["db.example.com"], "5432", "shop", "app").as_deref(),
            Some("first")
        );
        assert_eq!(
            find(file, &["other"], "5432", "shop", "app").as_deref(),
            Some("second")
        );
        assert_eq!(
            find(file, &["other"], "6543", "shop", "bob").as_deref(),
            Some("any")
        );
        assert_eq!(find("h:1:d:u:p\n", &["h"], "2", "d", "u"), None);
    }

    #[test]
    fn escapes_and_trailing_fields() {
        let file = "h\\:x:5432:d\\\\b:u:pa\\:ss\\\\word:ignored\r\n";
        assert_eq!(
            find(file, &["h:x"], "5432", "d\\b", "u").as_deref(),
            Some("pa:ss\\word")
        );
        // An escaped star is a literal star.
        assert_eq!(find("\\*:5432:d:u:p", &["h"], "5432", "d", "u"), None);
        assert_eq!(
            find("\\*:5432:d:u:p", &["*"], "5432", "d", "u").as_deref(),
            Some("p")
        );
        // Too few fields: ignored.
        assert_eq!(find("h:5432:d:u", &["h"], "5432", "d", "u"), None);
        // An empty password is a password.
        assert_eq!(
            find("h:5432:d:u:", &["h"], "5432", "d", "u").as_deref(),
            Some("")
        );
    }

    #[test]
    fn socket_hosts_match_localhost() {
        let file = "localhost:5432:*:app:local\n";
        assert_eq!(
            find(
                file,
                &["/var/run/postgresql", "localhost"],
                "5432",
                "d",
                "app"
            )
            .as_deref(),
            Some("local")
        );
    }

    #[test]
    fn ignores_files_others_can_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pgpass");
        fs::write(&path, "*:*:*:*:secret\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(read(&path), None);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read(&path).as_deref(), Some("*:*:*:*:secret\n"));
        assert_eq!(read(&dir.path().join("missing")), None);
        assert_eq!(read(dir.path()), None);
    }
}
