//! Text to AST. The only module that touches pest: everything after it works
//! on `ast.rs`. Operator precedence is pest's PrattParser.

use super::ast::*;
use crate::diag::{Code, Diagnostic, FileId};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::sync::LazyLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/fuse.pest"]
struct FuseParser;

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
        .op(Op::prefix(Rule::neg))
        .op(Op::postfix(Rule::call) | Op::postfix(Rule::member) | Op::postfix(Rule::index))
});

/// Parses one recipe file. A syntax error is reported with what was expected
/// in words, at the place the parser stopped; nesting deeper than
/// [`super::MAX_DEPTH`] is refused before pest recurses into it.
pub fn parse(text: &str, file: FileId) -> Result<Program, Diagnostic> {
    super::nesting::check(text, file)?;
    let mut pairs = FuseParser::parse(Rule::program, text).map_err(|e| syntax_error(e, text, file))?;
    let program = pairs.next().expect("program rule");
    let stmts = program.into_inner().filter(|p| p.as_rule() != Rule::EOI).map(stmt).collect();
    Ok(Program { stmts })
}

/// Parses a single expression (the REPL and `--set` values use this).
pub fn parse_expr(text: &str, file: FileId) -> Result<Expr, Diagnostic> {
    let program = parse(text, file)?;
    match program.stmts.as_slice() {
        [Stmt { kind: StmtKind::Expr(e), .. }] => Ok(e.clone()),
        _ => Err(Diagnostic::error(Code::E0001, "expected a single expression").with_label(
            file,
            Span::new(0, text.len()),
            "this is not one expression",
        )),
    }
}

fn span(p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

fn ident(p: Pair<Rule>) -> Ident {
    Ident { name: p.as_str().to_string(), span: span(&p) }
}

fn stmt(p: Pair<Rule>) -> Stmt {
    let sp = span(&p);
    let rule = p.as_rule();
    let mut inner = p.into_inner().filter(|q| !is_keyword(q.as_rule()));
    let kind = match rule {
        Rule::import_stmt => {
            let s = inner.next().unwrap();
            let path_span = span(&s);
            StmtKind::Import { path: string_value(s), path_span }
        }
        Rule::param_stmt => StmtKind::Param { name: ident(inner.next().unwrap()), value: expr(inner.next().unwrap()) },
        Rule::let_stmt => StmtKind::Let { name: ident(inner.next().unwrap()), value: expr(inner.next().unwrap()) },
        Rule::fn_stmt => {
            let name = ident(inner.next().unwrap());
            let mut params = Vec::new();
            let mut body = None;
            for q in inner {
                match q.as_rule() {
                    Rule::fn_param => {
                        let mut qi = q.into_inner().peekable();
                        let variadic = qi.next_if(|p| p.as_rule() == Rule::variadic).is_some();
                        let name = ident(qi.next().unwrap());
                        params.push(FnParam { name, default: qi.next().map(expr), variadic });
                    }
                    _ => body = Some(expr(q)),
                }
            }
            StmtKind::Fn { name, params, body: body.expect("fn body") }
        }
        Rule::expr_stmt => {
            let e = expr(inner.next().unwrap());
            match e.kind {
                ExprKind::Call { callee, args } if matches!(&callee.kind, ExprKind::Ident(n) if n == "save" || n == "save_lora") =>
                {
                    let lora = matches!(&callee.kind, ExprKind::Ident(n) if n == "save_lora");
                    StmtKind::Save { args, lora }
                }
                kind => StmtKind::Expr(Expr { kind, span: e.span }),
            }
        }
        r => unreachable!("statement rule {r:?}"),
    };
    Stmt { kind, span: sp }
}

fn is_keyword(r: Rule) -> bool {
    matches!(r, Rule::kw_import | Rule::kw_param | Rule::kw_fn | Rule::kw_match)
}

fn expr(p: Pair<Rule>) -> Expr {
    debug_assert_eq!(p.as_rule(), Rule::expr);
    pratt(p.into_inner())
}

fn pratt(pairs: Pairs<Rule>) -> Expr {
    PRATT
        .map_primary(primary)
        .map_prefix(|op, rhs| {
            let sp = span(&op).to(rhs.span);
            Expr { kind: ExprKind::Neg(Box::new(rhs)), span: sp }
        })
        .map_postfix(postfix)
        .map_infix(|lhs, op, rhs| {
            let op = match op.as_rule() {
                Rule::add => BinOp::Add,
                Rule::sub => BinOp::Sub,
                Rule::mul => BinOp::Mul,
                Rule::div => BinOp::Div,
                r => unreachable!("infix {r:?}"),
            };
            let sp = lhs.span.to(rhs.span);
            // Operators fold left, so `lhs op rhs` extends a chain on the
            // left whatever its operators were (parentheses included:
            // `(a + b) * c` is ((a + b) * c) either way).
            match lhs.kind {
                ExprKind::Chain(first, mut rest) => {
                    rest.push((op, rhs));
                    Expr { kind: ExprKind::Chain(first, rest), span: sp }
                }
                kind => {
                    Expr { kind: ExprKind::Chain(Box::new(Expr { kind, span: lhs.span }), vec![(op, rhs)]), span: sp }
                }
            }
        })
        .parse(pairs)
}

fn postfix(lhs: Expr, op: Pair<Rule>) -> Expr {
    let sp = lhs.span.to(span(&op));
    let kind = match op.as_rule() {
        Rule::call => ExprKind::Call { callee: Box::new(lhs), args: op.into_inner().map(arg).collect() },
        Rule::member => ExprKind::Member(Box::new(lhs), ident(op.into_inner().next().unwrap())),
        Rule::index => {
            // [range_lo], [range_lo, range], or [range]; a range holds its range_hi.
            let (mut lo, mut range) = (None, None);
            for b in op.into_inner() {
                if b.as_rule() == Rule::range_lo {
                    lo = Some(Box::new(expr(b.into_inner().next().unwrap())));
                } else {
                    range = Some(b.into_inner().next().map(|hi| Box::new(expr(hi.into_inner().next().unwrap()))));
                }
            }
            match (lo, range) {
                (Some(i), None) => ExprKind::Index(Box::new(lhs), i),
                (lo, hi) => ExprKind::Slice { target: Box::new(lhs), lo, hi: hi.flatten() },
            }
        }
        r => unreachable!("postfix {r:?}"),
    };
    Expr { kind, span: sp }
}

fn arg(p: Pair<Rule>) -> Arg {
    let inner = p.into_inner().next().unwrap();
    if inner.as_rule() == Rule::named_arg {
        let mut i = inner.into_inner();
        let name = ident(i.next().unwrap());
        Arg { name: Some(name), value: expr(i.next().unwrap()) }
    } else {
        Arg { name: None, value: expr(inner) }
    }
}

fn primary(p: Pair<Rule>) -> Expr {
    let sp = span(&p);
    let kind = match p.as_rule() {
        Rule::number => ExprKind::Num(p.as_str().parse().expect("grammar admits only valid numbers")),
        Rule::string => ExprKind::Str(string_value(p)),
        Rule::boolean => ExprKind::Bool(p.as_str() == "true"),
        Rule::none => ExprKind::None,
        Rule::dtype => ExprKind::DType(match p.as_str() {
            "bf16" => DTypeLit::BF16,
            "f16" => DTypeLit::F16,
            _ => DTypeLit::F32,
        }),
        Rule::ident => ExprKind::Ident(p.as_str().to_string()),
        Rule::list => ExprKind::List(p.into_inner().map(expr).collect()),
        Rule::expr => {
            // A parenthesized expression spans its parentheses, so that an
            // expression ending in one (`lam*(ft - base)`) spans to its end.
            let (input, inner) = (p.get_input(), p.as_span());
            let mut e = expr(p);
            let before = input[..inner.start()].trim_end();
            let after = &input[inner.end()..];
            let close = inner.end() + (after.len() - after.trim_start().len());
            if before.ends_with('(') && input[close..].starts_with(')') {
                e.span = Span::new(before.len() - 1, close + 1);
            }
            return e;
        }
        Rule::match_expr => {
            let mut inner = p.into_inner().filter(|q| q.as_rule() != Rule::kw_match);
            let scrutinee = Box::new(expr(inner.next().unwrap()));
            let arms = inner
                .map(|arm| {
                    let mut a = arm.into_inner();
                    let pat = a.next().unwrap().into_inner().next().unwrap();
                    let pattern = match pat.as_rule() {
                        Rule::string => {
                            let s = span(&pat);
                            Pattern::Glob(string_value(pat), s)
                        }
                        _ => Pattern::Wildcard(span(&pat)),
                    };
                    MatchArm { pattern, value: expr(a.next().unwrap()) }
                })
                .collect();
            ExprKind::Match { scrutinee, arms }
        }
        r => unreachable!("primary {r:?}"),
    };
    Expr { kind, span: sp }
}

fn string_value(p: Pair<Rule>) -> String {
    let raw = p.into_inner().next().map_or("", |i| i.as_str());
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Turns pest's error into our diagnostic, naming what was expected in words.
fn syntax_error(e: pest::error::Error<Rule>, text: &str, file: FileId) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<&str> = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => positives.iter().map(|r| describe(*r)).collect(),
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    expected.sort();
    expected.dedup();
    // "an expression" covers its parts; say it first.
    if let Some(i) = expected.iter().position(|w| *w == "an expression") {
        expected.remove(i);
        expected.retain(|w| *w != "a name" && *w != "a string");
        expected.insert(0, "an expression");
    }
    let found = found_at(text, pos);
    let (end, message) = match found {
        Some(tok) => (pos + tok.len(), format!("unexpected `{tok}`")),
        None => (pos, "unexpected end of input".to_string()),
    };
    let wanted = if expected.is_empty() { "something else".to_string() } else { join_words(&expected) };
    let mut d =
        Diagnostic::error(Code::E0001, message).with_label(file, Span::new(pos, end), format!("expected {wanted}"));
    if found.is_none() && text[..pos].matches('(').count() > text[..pos].matches(')').count() {
        d = d.with_help("a `(` is still open: close it with `)`");
    }
    d
}

/// The token at `pos`, for "unexpected `...`".
fn found_at(text: &str, pos: usize) -> Option<&str> {
    let rest = text.get(pos..)?;
    let c = rest.chars().next()?;
    let len = if c.is_alphanumeric() || c == '_' {
        rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len())
    } else {
        c.len_utf8()
    };
    Some(&rest[..len])
}

fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::expr
        | Rule::primary
        | Rule::number
        | Rule::boolean
        | Rule::none
        | Rule::dtype
        | Rule::list
        | Rule::match_expr
        | Rule::neg
        | Rule::prefix => "an expression",
        Rule::ident | Rule::let_stmt | Rule::fn_param => "a name",
        Rule::string | Rule::string_inner => "a string",
        Rule::call => "`(`",
        Rule::member => "`.`",
        Rule::index => "`[`",
        Rule::range => "`..`",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::infix => "an operator",
        Rule::arg | Rule::named_arg => "an argument",
        Rule::match_arm | Rule::pattern | Rule::wildcard => "a match arm (`\"glob\" => value` or `_ => value`)",
        Rule::EOI => "end of input",
        Rule::kw_import | Rule::kw_param | Rule::kw_fn => "a statement",
        Rule::kw_match => "an expression",
        Rule::import_stmt | Rule::param_stmt | Rule::fn_stmt | Rule::expr_stmt | Rule::stmt => "a statement",
        _ => "something else",
    }
}

fn join_words(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Program {
        parse(text, FileId(0)).unwrap_or_else(|d| panic!("{}: {d:?}", text))
    }

    /// Renders an expression back with full parentheses: precedence made visible.
    fn show(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Num(n) => n.to_string(),
            ExprKind::Str(s) => format!("{s:?}"),
            ExprKind::Bool(b) => b.to_string(),
            ExprKind::None => "none".into(),
            ExprKind::DType(d) => format!("{d:?}"),
            ExprKind::Ident(n) => n.clone(),
            ExprKind::List(items) => format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", ")),
            ExprKind::Neg(x) => format!("(-{})", show(x)),
            ExprKind::Chain(first, rest) => {
                rest.iter().fold(show(first), |acc, (op, b)| format!("({acc} {op} {})", show(b)))
            }
            ExprKind::Call { callee, args } => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{}={}", n.name, show(&a.value)),
                        None => show(&a.value),
                    })
                    .collect();
                format!("{}({})", show(callee), args.join(", "))
            }
            ExprKind::Member(x, m) => format!("{}.{}", show(x), m.name),
            ExprKind::Index(x, i) => format!("{}[{}]", show(x), show(i)),
            ExprKind::Slice { target, lo, hi } => format!(
                "{}[{}..{}]",
                show(target),
                lo.as_ref().map_or(String::new(), |e| show(e)),
                hi.as_ref().map_or(String::new(), |e| show(e))
            ),
            ExprKind::Match { scrutinee, arms } => {
                let arms: Vec<String> = arms
                    .iter()
                    .map(|a| match &a.pattern {
                        Pattern::Glob(g, _) => format!("{g:?} => {}", show(&a.value)),
                        Pattern::Wildcard(_) => format!("_ => {}", show(&a.value)),
                    })
                    .collect();
                format!("match {} {{ {} }}", show(scrutinee), arms.join(", "))
            }
        }
    }

    fn show_stmt(s: &Stmt) -> String {
        match &s.kind {
            StmtKind::Let { name, value } => format!("let {} = {}", name.name, show(value)),
            StmtKind::Param { name, value } => format!("param {} = {}", name.name, show(value)),
            StmtKind::Fn { name, params, body } => {
                let ps: Vec<String> = params
                    .iter()
                    .map(|p| {
                        let dots = if p.variadic { ".." } else { "" };
                        match &p.default {
                            Some(d) => format!("{dots}{}={}", p.name.name, show(d)),
                            None => format!("{dots}{}", p.name.name),
                        }
                    })
                    .collect();
                format!("fn {}({}) = {}", name.name, ps.join(", "), show(body))
            }
            StmtKind::Import { path, .. } => format!("import {path:?}"),
            StmtKind::Save { args, lora } => format!("save{}/{}", if *lora { "_lora" } else { "" }, args.len()),
            StmtKind::Expr(e) => format!("expr {}", show(e)),
        }
    }

    #[test]
    fn every_construct_parses_to_our_ast() {
        let text = r#"# a comment
import "lib.fuse"
param lam = 0.3   # trailing comment
fn blend(a, b, t=0.5) = (1 - t)*a + t*b
fn many(..models, base=none) = models
x = -a + b * 2 / c - -1e-3
t = match tensor { "*self_attn*" => over_layers(0, .5, 1), _ => 0.5, }
s = m.layers[0..8]
i = xs[2]
l = [1, 2.5, true, "s", bf16]
save(x, "out", dtype=f16, shard="5GB")
base + lam*(ft - base) + ties(b, c, k=0.2)
"#;
        let shown: Vec<String> = p(text).stmts.iter().map(show_stmt).collect();
        insta::assert_snapshot!(shown.join("\n"));
    }

    #[test]
    fn spans_are_byte_ranges() {
        let text = "x = ab + cd";
        let prog = p(text);
        let StmtKind::Let { value, .. } = &prog.stmts[0].kind else { panic!() };
        assert_eq!(&text[value.span.start..value.span.end], "ab + cd");
        let ExprKind::Chain(l, rest) = &value.kind else { panic!() };
        let r = &rest[0].1;
        assert_eq!((&text[l.span.start..l.span.end], &text[r.span.start..r.span.end]), ("ab", "cd"));
    }

    #[test]
    fn indexes_and_slices() {
        let shown: Vec<String> = p("a = xs[1]\nb = xs[1..2]\nc = xs[..2]\nd = xs[1..]\ne = xs[..]\nf = xs[i + 1][0]\n")
            .stmts
            .iter()
            .map(show_stmt)
            .collect();
        assert_eq!(
            shown,
            [
                "let a = xs[1]",
                "let b = xs[1..2]",
                "let c = xs[..2]",
                "let d = xs[1..]",
                "let e = xs[..]",
                "let f = xs[(i + 1)][0]"
            ]
        );
    }

    #[test]
    fn nested_indexes_parse_in_linear_time() {
        // Trying a range before an index re-parsed the inside on every level:
        // 2^60 steps here.
        let text = format!("x = {}0{}", "xs[".repeat(60), "]".repeat(60));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(parse(&text, FileId(0)).is_ok()));
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(20)), Ok(true));
    }

    #[test]
    fn keywords_are_not_names_but_prefixes_are() {
        let prog = p("params = 1\nfnord = 2\nmatching = 3\n");
        assert_eq!(prog.stmts.len(), 3);
        assert!(parse("param = 1", FileId(0)).is_err());
    }
}
