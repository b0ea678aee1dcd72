//! Completion as plain data, shared by the REPL (which wraps it for
//! rustyline) and the language server (which converts it to LSP items):
//! bound names, the functions a recipe can call, and the named arguments of
//! the call the cursor is in.

use crate::check;

/// What a completion names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A name the recipe (or session) binds.
    Name,
    /// A builtin, native method or standard-library function.
    Function,
    /// A named argument of the enclosing call, as `name=`.
    Argument,
    /// A REPL command such as `:stats`.
    Command,
}

/// One candidate: `text` replaces the word before the cursor.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub text: String,
    pub kind: Kind,
}

/// The candidates for the word that ends at byte `pos` of `text`, and where
/// that word starts. `names` are the bindings in scope. Nothing is offered
/// for an empty word.
pub fn complete(names: &[String], text: &str, pos: usize) -> (usize, Vec<Completion>) {
    let before = &text[..pos];
    let start = before.rfind(|c: char| !is_word(c)).map_or(0, |i| i + 1);
    let word = &before[start..];
    let mut cands: Vec<Completion> = Vec::new();
    if word.is_empty() {
        return (start, cands);
    }
    let mut offer = |text: String, kind| {
        if text.starts_with(word) {
            cands.push(Completion { text, kind });
        }
    };
    for n in names {
        offer(n.clone(), Kind::Name);
    }
    for f in check::function_names() {
        offer(f, Kind::Function);
    }
    if let Some(callee) = open_call(before) {
        for p in check::parameters_of(callee) {
            offer(format!("{p}="), Kind::Argument);
        }
    }
    cands.sort_by(|a, b| a.text.cmp(&b.text));
    // A name bound by the recipe and offered again as a function is one candidate.
    cands.dedup_by(|a, b| a.text == b.text);
    (start, cands)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The function whose argument list is still open at the end of `before`.
/// Brackets inside strings and comments are not counted.
fn open_call(before: &str) -> Option<&str> {
    let mut open: Vec<usize> = Vec::new();
    for line_start in line_starts(before) {
        let line = &before[line_start..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        let mut in_str = false;
        for (i, c) in line.char_indices() {
            match c {
                '"' => in_str = !in_str,
                '#' if !in_str => break,
                '(' | '[' | '{' if !in_str => open.push(line_start + i),
                ')' | ']' | '}' if !in_str => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    let at = *open.last()?;
    if !before[at..].starts_with('(') {
        return None;
    }
    let callee_start = before[..at].rfind(|c: char| !is_word(c)).map_or(0, |i| i + 1);
    Some(&before[callee_start..at])
}

fn line_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        let names = vec!["base".to_string(), "math".to_string()];
        complete(&names, line, line.len()).1.into_iter().map(|c| c.text).collect()
    }

    #[test]
    fn completes_names_functions_and_arguments() {
        assert_eq!(words("ba"), ["base"]);
        assert!(words("ti").contains(&"ties".to_string()));
        assert_eq!(words("x = ties(math, dens"), ["density="]);
        assert!(words("").is_empty());
    }

    #[test]
    fn arguments_only_inside_an_open_call() {
        // `ties(...)` is closed: `density=` is not an argument here.
        assert!(words("x = ties(math, density=0.2)\nden").is_empty());
        assert_eq!(words("x = ties(math,\n  [base], dens"), ["density="]);
        assert_eq!(words("x = ties(math, \"(\", dens"), ["density="]);
    }

    #[test]
    fn kinds_say_what_a_candidate_is() {
        let names = vec!["tiesy".to_string()];
        let (start, c) = complete(&names, "y = ties(a, de", 14);
        assert_eq!(start, 12);
        let kind = |c: &[Completion], t: &str| c.iter().find(|c| c.text == t).unwrap().kind;
        assert_eq!(kind(&c, "density="), Kind::Argument);
        assert_eq!(kind(&c, "della"), Kind::Function);
        let (_, c) = complete(&names, "tie", 3);
        assert_eq!(kind(&c, "tiesy"), Kind::Name);
        assert_eq!(kind(&c, "ties"), Kind::Function);
    }
}
