//! `--color auto|always|never` and the environment conventions for it: `NO_COLOR` turns
//! colour off, `CLICOLOR_FORCE` or `FORCE_COLOR` turn it on when not on a terminal, and
//! `--color always|never` overrides them all.

use anstream::ColorChoice;

use crate::cli::ColorWhen;

/// The process-wide choice from the flag and the environment. `auto` is left to anstream,
/// which already honours `NO_COLOR`, `CLICOLOR_FORCE`, `CLICOLOR` and `TERM`; `FORCE_COLOR`
/// (Node's and many CI systems' convention) is added here, below `NO_COLOR`.
pub fn choose(when: ColorWhen) -> ColorChoice {
    choose_from(when, |name| std::env::var_os(name))
}

fn choose_from(when: ColorWhen, var: impl Fn(&str) -> Option<std::ffi::OsString>) -> ColorChoice {
    let set = |name: &str| var(name).is_some_and(|value| !value.is_empty());
    match when {
        ColorWhen::Always => ColorChoice::Always,
        ColorWhen::Never => ColorChoice::Never,
        ColorWhen::Auto if set("NO_COLOR") => ColorChoice::Never,
        ColorWhen::Auto
            if var("FORCE_COLOR")
                .is_some_and(|value| !matches!(value.to_str(), Some("" | "0" | "false"))) =>
        {
            ColorChoice::Always
        }
        ColorWhen::Auto => ColorChoice::Auto,
    }
}

/// Whether logs and error reports on stderr are coloured, once [`choose`]'s answer is the
/// global choice.
pub fn stderr_colored() -> bool {
    anstream::AutoStream::choice(&std::io::stderr()) != ColorChoice::Never
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())
    }

    #[test]
    fn the_flag_wins_then_no_color_then_force_color() {
        let forced = with(&[("FORCE_COLOR", "1")]);
        assert_eq!(choose_from(ColorWhen::Auto, &forced), ColorChoice::Always);
        assert_eq!(choose_from(ColorWhen::Never, &forced), ColorChoice::Never);
        let both = with(&[("FORCE_COLOR", "1"), ("NO_COLOR", "1")]);
        assert_eq!(choose_from(ColorWhen::Auto, &both), ColorChoice::Never);
        assert_eq!(choose_from(ColorWhen::Always, &both), ColorChoice::Always);
        let off = with(&[("FORCE_COLOR", "0")]);
        assert_eq!(choose_from(ColorWhen::Auto, &off), ColorChoice::Auto);
        assert_eq!(choose_from(ColorWhen::Auto, with(&[])), ColorChoice::Auto);
    }
}
