//! Shell command templates with repmgr's `%x` placeholders, substituted safely.
//!
//! Settings such as `repmgr.event_notification_command` are shell commands with placeholders
//! (`%n`, `%e`, `%d`, ...). Substituted values come from the cluster (node names, event
//! details) and must never be able to run code, so each value is quoted for the shell context
//! it lands in: bare words get single quotes, and values inside the template's own single or
//! double quotes are escaped for that quote style. Existing repmgr templates written as
//! `"%d"` therefore keep working and stay safe.

/// Quotes `v` as one shell word.
pub fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Bare,
    Single,
    Double,
}

fn escape_for(ctx: Ctx, v: &str) -> String {
    match ctx {
        Ctx::Bare => shell_quote(v),
        Ctx::Single => v.replace('\'', r"'\''"),
        Ctx::Double => {
            let mut out = String::with_capacity(v.len());
            for c in v.chars() {
                if matches!(c, '\\' | '"' | '$' | '`') {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }
    }
}

/// Substitutes `%c` placeholders from `values` (pairs of placeholder letter and value).
/// `%%` becomes `%`; a placeholder without a value becomes an empty (quoted) string; any other
/// `%x` is copied verbatim, as repmgr does.
pub fn render(template: &str, values: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut ctx = Ctx::Bare;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match (ctx, c) {
            (_, '%') => match chars.peek().copied() {
                Some('%') => {
                    chars.next();
                    out.push('%');
                }
                Some(p) if values.iter().any(|(k, _)| *k == p) => {
                    chars.next();
                    let v = values.iter().find(|(k, _)| *k == p).map_or("", |(_, v)| *v);
                    out.push_str(&escape_for(ctx, v));
                }
                _ => out.push('%'),
            },
            (Ctx::Bare | Ctx::Double, '\\') => {
                out.push('\\');
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            (Ctx::Bare, '\'') => {
                ctx = Ctx::Single;
                out.push(c);
            }
            (Ctx::Bare, '"') => {
                ctx = Ctx::Double;
                out.push(c);
            }
            (Ctx::Single, '\'') | (Ctx::Double, '"') => {
                ctx = Ctx::Bare;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// The placeholder letters a template uses that are not in `known`, for configuration checks.
pub fn unknown_placeholders(template: &str, known: &[char]) -> Vec<char> {
    let mut found = Vec::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('%') | None => {}
                Some(p) if known.contains(&p) => {}
                Some(p) => found.push(p),
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs the rendered command through /bin/sh and returns what it printed, to prove the
    /// quoting from the shell's own point of view.
    fn sh(cmd: &str) -> String {
        let out = Command::new("/bin/sh").arg("-c").arg(cmd).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    const NASTY: &str = "it's \"quoted\" $HOME `id` \\ ; rm -rf / %n";

    #[test]
    fn bare_single_and_double_contexts_are_all_safe() {
        let vals = [('d', NASTY), ('n', "7")];
        assert_eq!(
            sh(&render("printf '%%s|' %d %n", &vals)),
            format!("{NASTY}|7|")
        );
        assert_eq!(
            sh(&render("printf '%%s|' \"%d\" \"x%ny\"", &vals)),
            format!("{NASTY}|x7y|")
        );
        assert_eq!(
            sh(&render("printf '%%s|' '%d' 'a%nb'", &vals)),
            format!("{NASTY}|a7b|")
        );
    }

    #[test]
    fn percent_rules() {
        assert_eq!(render("a %% b %z c %", &[]), "a % b %z c %");
        assert_eq!(render("x %p y", &[('p', "")]), "x '' y");
        assert_eq!(render(r#"echo \"%n"#, &[('n', "1")]), r#"echo \"'1'"#);
        assert_eq!(
            unknown_placeholders("%n %e %% %q %x", &['n', 'e']),
            vec!['q', 'x']
        );
    }
}
