//! SentencePiece's `tokenizer.model` (Llama 2, Mistral, Gemma, TinyLlama),
//! read for a GGUF output: the vocabulary with scores and piece types, which
//! llama.cpp's SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`)
//! needs and `tokenizer.json` does not hold. The file is a protobuf
//! `ModelProto`; only the fields used here are decoded, by hand, from the
//! wire format: `pieces` (field 1: `piece` 1, `score` 2, `type` 3) and
//! `normalizer_spec.add_dummy_prefix` (field 3, its field 3).

/// One vocabulary entry. `kind` uses SentencePiece's numbering, which GGUF's
/// `token_type` shares: 1 normal, 2 unknown, 3 control, 4 user-defined,
/// 5 unused, 6 byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: i32,
}

/// A parsed `tokenizer.model`.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub pieces: Vec<Piece>,
    /// Whether a space is prepended to the text (`▁` before the first word).
    pub add_dummy_prefix: bool,
}

/// Parses the bytes of a `tokenizer.model`; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> Result<Model, String> {
    let mut model = Model { pieces: Vec::new(), add_dummy_prefix: true };
    for field in Fields::new(bytes) {
        match field? {
            (1, Wire::Bytes(b)) => model.pieces.push(piece(b)?),
            (3, Wire::Bytes(b)) => {
                for f in Fields::new(b) {
                    if let (3, Wire::Varint(v)) = f? {
                        model.add_dummy_prefix = v != 0;
                    }
                }
            }
            _ => {}
        }
    }
    if model.pieces.is_empty() {
        return Err("it holds no vocabulary (no SentencePiece pieces)".into());
    }
    Ok(model)
}

fn piece(bytes: &[u8]) -> Result<Piece, String> {
    let mut p = Piece { text: String::new(), score: 0.0, kind: 1 };
    for f in Fields::new(bytes) {
        match f? {
            (1, Wire::Bytes(b)) => p.text = String::from_utf8(b.to_vec()).map_err(|_| "a piece is not UTF-8")?,
            (2, Wire::Fixed32(v)) => p.score = f32::from_bits(v),
            (3, Wire::Varint(v)) => p.kind = v as i32,
            _ => {}
        }
    }
    Ok(p)
}

/// A protobuf field's value by wire type.
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The fields of one protobuf message, in order: (field number, value).
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.rest.split_first().ok_or("truncated varint")?;
            self.rest = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err("a field runs past the end of the file".into());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Wire::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Wire::Fixed64
                }
                2 => {
                    let n = self.varint()? as usize;
                    Wire::Bytes(self.take(n)?)
                }
                5 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
                w => return Err(format!("protobuf wire type {w} is not one SentencePiece uses")),
            };
            Ok((key >> 3, value))
        })();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ModelProto written field by field from the protobuf encoding rules.
    fn encode(pieces: &[(&str, f32, i32)], dummy: Option<bool>) -> Vec<u8> {
        fn bytes_field(out: &mut Vec<u8>, field: u8, b: &[u8]) {
            out.push(field << 3 | 2);
            let mut n = b.len();
            while n >= 0x80 {
                out.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out.extend_from_slice(b);
        }
        let mut out = Vec::new();
        for (text, score, kind) in pieces {
            let mut p = Vec::new();
            bytes_field(&mut p, 1, text.as_bytes());
            p.push(2 << 3 | 5);
            p.extend_from_slice(&score.to_le_bytes());
            p.extend_from_slice(&[3 << 3, *kind as u8]);
            bytes_field(&mut out, 1, &p);
        }
        // A trainer spec (field 2) with a fixed64 and a varint, skipped.
        bytes_field(&mut out, 2, &[1 << 3 | 1, 0, 0, 0, 0, 0, 0, 0, 0, 2 << 3, 0x96, 0x01]);
        if let Some(d) = dummy {
            bytes_field(&mut out, 3, &[3 << 3, d as u8]);
        }
        out
    }

    #[test]
    fn reads_pieces_scores_types_and_the_dummy_prefix() {
        let long = "▁".repeat(50);
        let pieces =
            [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("<0x0A>", 0.0, 6), ("▁the", -1.5, 1), (long.as_str(), -9.25, 1)];
        let m = parse(&encode(&pieces, Some(false))).unwrap();
        assert!(!m.add_dummy_prefix);
        let got: Vec<(&str, f32, i32)> = m.pieces.iter().map(|p| (p.text.as_str(), p.score, p.kind)).collect();
        assert_eq!(got, pieces);
        assert!(parse(&encode(&pieces, None)).unwrap().add_dummy_prefix);
        let mut cut = encode(&pieces, None);
        cut.truncate(cut.len() - 20);
        assert!(parse(&cut).is_err());
        assert!(parse(&[]).unwrap_err().contains("no vocabulary"));
    }
}
