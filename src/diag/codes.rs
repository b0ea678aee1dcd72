//! The stable error codes. Each code's doc comment gives the smallest recipe
//! that triggers it; `tests/diagnostics/` holds a recipe per code, and a
//! meta-test checks that no code goes untested.

use std::fmt;

macro_rules! codes {
    ($( $(#[doc = $doc:literal])* $name:ident = $summary:literal, )*) => {
        /// A stable diagnostic code, such as `E0101`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[doc = $doc])* $name, )*
        }

        impl Code {
            /// Every code, for the meta-test and `fuse explain`-style listings.
            pub const ALL: &'static [Code] = &[$(Code::$name),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$name => stringify!($name),)* }
            }

            /// One line saying what the code is about.
            pub fn summary(self) -> &'static str {
                match self { $(Code::$name => $summary,)* }
            }
        }
    };
}

codes! {
    /// The recipe is not valid syntax: `a = (1 +`
    E0001 = "syntax error",
    /// An expression nested more than 256 levels deep: `x = ((((...1...))))`; or
    /// calls whose bodies together nest more than 320: `fn f(m) = -(-(-(-f(m))))`
    E0002 = "nesting too deep",
    /// A name is used but never bound: `x = y + 1`
    E0101 = "unknown name",
    /// A name is bound twice: `a = 1` then `a = 2`
    E0102 = "name bound twice",
    /// A function that does not exist is called: `tise(a, b)`
    E0103 = "unknown function",
    /// A named argument the function does not take: `ties(a, b, densty=0.5)`
    E0104 = "unknown argument",
    /// A required argument is missing: `model()`
    E0105 = "missing argument",
    /// An argument or operand has the wrong type: `model(1)`
    E0106 = "type mismatch",
    /// Too many positional arguments, or an argument given twice: `model("a", "b")`
    E0107 = "too many arguments",
    /// A per-model list has the wrong length: `ties(a, b, weight=[1, 2, 3])`
    E0108 = "per-model list of the wrong length",
    /// `--set` names no `param` of the recipe: `fuse run r.fuse --set lamda=1`
    E0109 = "unknown parameter override",
    /// A `fn` calls itself, directly or not: `fn f(x) = f(x)`
    E0110 = "recursion",
    /// A bare expression that is not the last statement, or a recipe with nothing to write
    E0111 = "misplaced expression",
    /// Operands of different architectures: `a + (b - c)` where `b` has other shapes
    E0201 = "architecture mismatch",
    /// A weighted sum of models whose weights add up to neither 1 nor 0: `0.7*a + 0.7*b`
    E0202 = "weights of a model sum must add up to 1 or 0",
    /// An operator that has no meaning on its operands: `a * b` for two models
    E0203 = "invalid operation",
    /// A task-vector method given models but no base: `ties(a, b)` with no `base`
    E0204 = "no base model for task vectors",
    /// A layer index or slice outside the model: `m.layers[0..99]` on a 32-layer model
    E0205 = "layer range out of bounds",
    /// A structural operation on a model family it does not support: `moe(...)` of GPT-2 models
    E0206 = "unsupported model family",
    /// Integer tensors (buffers such as `position_ids`) are copied from one model, not merged (a warning):
    /// `base + ties(a, b)` of BERT checkpoints
    E0207 = "integer tensors copied, not merged",
    /// An Ensemble written as a model: `save(ensemble(a, b), "out")`
    E0208 = "an Ensemble cannot be saved",
    /// Arithmetic or a merge on an Ensemble: `0.5*ensemble(a, b)`
    E0209 = "an Ensemble is not a model",
    /// Ensemble members that do not share a tokenizer: `ensemble(a, b)` with vocabularies of 96 and 100 tokens
    E0210 = "ensemble members with different tokenizers",
    /// A model path that does not exist or is not a checkpoint: `model("missing")`
    E0301 = "model not found",
    /// A checkpoint whose files are unreadable or malformed
    E0302 = "bad checkpoint",
    /// An imported file that does not exist or imports itself: `import "nope.fuse"`
    E0303 = "import failed",
    /// A bad output request: `save(a, "out", shard="lots")`
    E0401 = "bad output",
    /// The output path exists and may not be replaced: not empty without `--force`, or
    /// (even with `--force`) holding files fuse did not write
    E0402 = "output exists",
    /// A failure while reading inputs or writing the output
    E0403 = "run failed",
    /// An input tensor holds NaN or infinity (a warning; an error with `--strict`)
    E0404 = "non-finite input values",
    /// The run was interrupted by SIGINT or SIGTERM; nothing was written
    E0405 = "interrupted",
    /// An output that is, contains or lies inside something the recipe reads: `save(model("base"), "base")`
    E0406 = "output overlaps an input",
    /// Something beside the weights could not be carried exactly (a warning): config.json's
    /// per-layer fields after `stack`, sentence-transformers module weights copied unmerged
    E0407 = "output files adjusted",
    /// `fuse eval` of a model family it has no forward pass for (Llama, Mistral, Qwen2, Mixtral and Gemma 3 have one)
    E0501 = "architecture not supported by eval",
    /// `fuse eval --text` of a text with fewer tokens than one window of `--context`
    E0502 = "text shorter than one window",
    /// `fuse eval` of a model without a usable tokenizer.json, or members that tokenize the text differently
    E0503 = "tokenizer missing or different",
    /// `fuse eval` would need more memory than `--max-memory`
    E0504 = "evaluation exceeds the memory limit",
    /// A bad `fuse eval` option: `--sweep lam=a:b`, `--context 0`
    E0505 = "bad eval option",
    /// A failure while evaluating: unreadable text or weights, a device that cannot be used
    E0506 = "evaluation failed",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
