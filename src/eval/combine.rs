//! Scoring logits and combining ensemble members, in f64.
//!
//! `mean`: `p(t) = sum_m w_m p_m(t)`, from each member's saved log-probability
//! of each scored token: one f64 per token and member. With `max = max_m
//! lp_m` it is computed as `max + ln sum_m w_m exp(lp_m - max)`, so equal
//! members give back exactly their own log-probability.
//!
//! `max`: `p(t) = max_m w_m p_m(t) / sum_v max_m w_m p_m(v)`. The
//! normalizer needs every member's whole distribution at every position,
//! so members evaluated one after another keep a running maximum over the
//! vocabulary for each scored token: `tokens * vocab` f32s, the memory this
//! mode costs beyond `mean`.

/// `ln softmax(row)[target]`.
pub fn log_prob(row: &[f32], target: usize) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

/// Combines the members' log-probabilities of each token (`lps[m][i]`) with
/// normalized weights.
pub fn mean(lps: &[Vec<f64>], weights: &[f64]) -> Vec<f64> {
    (0..lps[0].len())
        .map(|i| {
            let max = lps.iter().map(|l| l[i]).fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                return max;
            }
            max + lps.iter().zip(weights).map(|(l, w)| w * (l[i] - max).exp()).sum::<f64>().ln()
        })
        .collect()
}

/// The running `max_m w_m p_m(v)` over the vocabulary at each scored token.
pub struct MaxMode {
    vocab: usize,
    rows: Vec<f32>,
    seen: bool,
}

impl MaxMode {
    pub fn new(tokens: usize, vocab: usize) -> MaxMode {
        MaxMode { vocab, rows: vec![0.0; tokens * vocab], seen: false }
    }

    /// The bytes it holds.
    pub fn bytes(tokens: usize, vocab: usize) -> u64 {
        (tokens * vocab * 4) as u64
    }

    /// Folds in one member's logits at scored token `i`, weighted by `w`.
    pub fn add(&mut self, i: usize, logits: &[f32], w: f64) {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
        let row = &mut self.rows[i * self.vocab..(i + 1) * self.vocab];
        for (r, &x) in row.iter_mut().zip(logits) {
            let p = (w * (x as f64 - max).exp() / sum) as f32;
            *r = if self.seen { r.max(p) } else { p };
        }
    }

    /// Call after each member.
    pub fn member_done(&mut self) {
        self.seen = true;
    }

    /// The combined log-probability of each scored token's target.
    pub fn finish(&self, targets: &[u32]) -> Vec<f64> {
        targets
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let row = &self.rows[i * self.vocab..(i + 1) * self.vocab];
                let z: f64 = row.iter().map(|&p| p as f64).sum();
                (row[t as usize] as f64).ln() - z.ln()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_equal_members_is_exact_and_mixes_probabilities() {
        let lp = vec![-0.3f64, -2.7, -11.0];
        assert_eq!(mean(&[lp.clone(), lp.clone()], &[0.5, 0.5]), lp);
        let m = mean(&[vec![0.5f64.ln()], vec![0.1f64.ln()]], &[0.75, 0.25]);
        assert!((m[0] - (0.75 * 0.5 + 0.25 * 0.1f64).ln()).abs() < 1e-12);
    }

    #[test]
    fn max_mode_takes_the_per_token_maximum_and_renormalizes() {
        // Two members over 3 tokens with known distributions (logits = ln p).
        let p1 = [0.7f64, 0.2, 0.1];
        let p2 = [0.1f64, 0.3, 0.6];
        let logits = |p: &[f64]| p.iter().map(|x| x.ln() as f32).collect::<Vec<_>>();
        let mut m = MaxMode::new(1, 3);
        m.add(0, &logits(&p1), 0.5);
        m.member_done();
        m.add(0, &logits(&p2), 0.5);
        // max: [0.7, 0.3, 0.6] / 1.6
        for (t, want) in [(0u32, 0.7 / 1.6), (1, 0.3 / 1.6), (2, 0.6 / 1.6)] {
            let got = m.finish(&[t])[0];
            assert!((got - f64::ln(want)).abs() < 1e-6, "{t}: {got} vs {}", f64::ln(want));
        }
        assert!((log_prob(&logits(&p1), 2) - 0.1f64.ln()).abs() < 1e-6);
    }
}
