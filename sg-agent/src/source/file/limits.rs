//! Bounds checked before a document reaches the YAML parser.

use super::Issues;

/// Deeper flow nesting (`[[[…`, `{{{…`) than any configuration needs.
const MAX_FLOW_DEPTH: usize = 64;

/// Refuses documents nested deeper than [`MAX_FLOW_DEPTH`] in flow style
/// before the YAML parser sees them: its cost grows with the square of the
/// depth (20,000 brackets took seconds), and its own recursion limit only
/// applies after that work. Brackets in quotes and comments do not count.
pub fn check_nesting(file: &str, text: &str) -> Result<(), Issues> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    let (mut comment, mut escaped, mut prev) = (false, false, ' ');
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
        } else if comment {
        } else if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else if c == '#' && prev.is_whitespace() {
            comment = true;
        } else if c == '"' || c == '\'' {
            quote = Some(c);
        } else if c == '[' || c == '{' {
            depth += 1;
            if depth > MAX_FLOW_DEPTH {
                let mut e =
                    Issues::single(file, format!("nested deeper than {MAX_FLOW_DEPTH} levels"));
                e.0[0].line = Some(line);
                return Err(e);
            }
        } else if c == ']' || c == '}' {
            depth = depth.saturating_sub(1);
        }
        prev = c;
    }
    Ok(())
}
