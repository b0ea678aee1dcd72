//! The native per-tensor kernels: the vocabulary the checker builds and the
//! executor implements. Generic over the number type: `Sched` (numbers that
//! may vary per tensor) while checking, [`super::F`] once lowered for one
//! tensor.

/// How a task vector is sparsified.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Sparsify<N> {
    /// Keep the `density` fraction of largest magnitudes (TIES).
    Magnitude { density: N },
    /// Drop the `gamma` fraction of largest magnitudes and the smallest,
    /// keeping `density` (Model Breadcrumbs).
    Outliers { density: N, gamma: N },
    /// Keep each entry with probability `density` (DARE).
    Random { density: N },
    /// Keep with probability from `density - epsilon` (smallest magnitude in
    /// its row) to `density + epsilon` (largest) (DELLA).
    Della { density: N, epsilon: N },
}

/// A kernel node's computation. Inputs are listed on the node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kernel<N> {
    /// One delta in, sparsified; `rescale` restores its L1 norm. Random
    /// masks draw from (seed, tensor name, stream).
    Sparsify { how: Sparsify<N>, rescale: bool, seed: u64, stream: u64 },
    /// Deltas in: weighted sum, optionally only entries agreeing with the
    /// elected sign, optionally divided by the (agreeing) weights.
    Consensus { weights: Vec<N>, elect_sign: bool, normalize: bool },
    /// Two tensors: spherical interpolation of the flattened tensors.
    Slerp { t: N },
    /// Two tensors: slerp of the whole tensor, or of each row or column.
    NuSlerp { t: N, flatten: bool, row_wise: bool },
    /// Many tensors: weighted spherical mean through the tangent space.
    MultiSlerp { weights: Vec<N>, eps: N },
    /// Many tensors: Riemannian (Karcher) mean of the directions.
    Karcher { max_iter: u64, tol: N },
    /// Base then models: interpolate the models' mean towards the base by
    /// their deltas' mean cosine.
    ModelStock { filter_wise: bool },
    /// Base and model: take the model where they are within `t`.
    NearSwap { t: N },
    /// Base and model: keep the delta where its KL-weighted importance is an outlier.
    ArceeFusion,
    /// Deltas in: per entry the value of largest magnitude (the last on
    /// ties), times `lambda` (MagMax).
    MagMax { lambda: N },
    /// Deltas in: per matrix, the SVD of their sum with every singular
    /// value set to the mean, times `lambda` (Iso-C); other tensors averaged.
    IsoC { lambda: N },
    /// Deltas in: per matrix, each delta's top `r/T` singular triplets with
    /// the stacked singular vectors orthogonalized, times `lambda` (TSV-M);
    /// other tensors averaged.
    TsvM { lambda: N },
    /// Deltas in: per matrix, the summed task vector's top `common` fraction
    /// of singular directions plus each delta's own top directions outside
    /// them, orthogonalized, with a flat spectrum, times `lambda` (Iso-CTS);
    /// other tensors averaged.
    IsoCts { lambda: N, common: N },
    /// Models in: their mean plus `lambda` times the sum of each model's
    /// deviation from it truncated to the top `rank` fraction of its
    /// singular triplets (CART); other tensors averaged.
    Cart { rank: N, lambda: N },
    /// Deltas in: entries changed (beyond `epsilon`) by one task vector keep
    /// its value, entries changed by several take their mean (RAM).
    Ram { epsilon: N },
    /// RAM with each task vector's unique entries boosted by
    /// `1 + r * clamp(shared / unique, 0, alpha)`, counted over the tensor
    /// (RAM+, tensor-local).
    RamPlusTl { r: N, alpha: N, epsilon: N },
    /// Deltas in: keep high-variance positions, elect signs, weight by energy.
    Sce { select_topk: N },
    /// A LoRA adapter's delta: inputs B [out, r] and A [r, in], result
    /// `scale * B A` [out, in].
    LoraProduct { scale: N },
    /// One input of `from` rows cut or padded to the node's rows; new rows
    /// are the mean of the input's rows.
    ResizeRows { from: u64 },
}

impl<N> Kernel<N> {
    /// The same kernel with every number converted.
    pub fn map<M>(&self, f: &impl Fn(&N) -> M) -> Kernel<M> {
        let sp = |s: &Sparsify<N>| match s {
            Sparsify::Magnitude { density } => Sparsify::Magnitude { density: f(density) },
            Sparsify::Outliers { density, gamma } => Sparsify::Outliers { density: f(density), gamma: f(gamma) },
            Sparsify::Random { density } => Sparsify::Random { density: f(density) },
            Sparsify::Della { density, epsilon } => Sparsify::Della { density: f(density), epsilon: f(epsilon) },
        };
        match self {
            Kernel::Sparsify { how, rescale, seed, stream } => {
                Kernel::Sparsify { how: sp(how), rescale: *rescale, seed: *seed, stream: *stream }
            }
            Kernel::Consensus { weights, elect_sign, normalize } => Kernel::Consensus {
                weights: weights.iter().map(f).collect(),
                elect_sign: *elect_sign,
                normalize: *normalize,
            },
            Kernel::Slerp { t } => Kernel::Slerp { t: f(t) },
            Kernel::NuSlerp { t, flatten, row_wise } => {
                Kernel::NuSlerp { t: f(t), flatten: *flatten, row_wise: *row_wise }
            }
            Kernel::MultiSlerp { weights, eps } => {
                Kernel::MultiSlerp { weights: weights.iter().map(f).collect(), eps: f(eps) }
            }
            Kernel::Karcher { max_iter, tol } => Kernel::Karcher { max_iter: *max_iter, tol: f(tol) },
            Kernel::ModelStock { filter_wise } => Kernel::ModelStock { filter_wise: *filter_wise },
            Kernel::NearSwap { t } => Kernel::NearSwap { t: f(t) },
            Kernel::ArceeFusion => Kernel::ArceeFusion,
            Kernel::MagMax { lambda } => Kernel::MagMax { lambda: f(lambda) },
            Kernel::IsoC { lambda } => Kernel::IsoC { lambda: f(lambda) },
            Kernel::TsvM { lambda } => Kernel::TsvM { lambda: f(lambda) },
            Kernel::IsoCts { lambda, common } => Kernel::IsoCts { lambda: f(lambda), common: f(common) },
            Kernel::Cart { rank, lambda } => Kernel::Cart { rank: f(rank), lambda: f(lambda) },
            Kernel::Ram { epsilon } => Kernel::Ram { epsilon: f(epsilon) },
            Kernel::RamPlusTl { r, alpha, epsilon } => {
                Kernel::RamPlusTl { r: f(r), alpha: f(alpha), epsilon: f(epsilon) }
            }
            Kernel::Sce { select_topk } => Kernel::Sce { select_topk: f(select_topk) },
            Kernel::LoraProduct { scale } => Kernel::LoraProduct { scale: f(scale) },
            Kernel::ResizeRows { from } => Kernel::ResizeRows { from: *from },
        }
    }

    /// Elementwise kernels can be computed a chunk at a time.
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Kernel::Consensus { .. } | Kernel::NearSwap { .. })
    }
}

/// How a mixture-of-experts router is initialized.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouterMode {
    /// Standard normal entries drawn from (seed, tensor name).
    Random { seed: u64 },
    /// All zeros: every expert scores the same.
    Uniform,
    /// Row e is the mean input embedding (tensor `tensor` of recipe model
    /// `model`) of expert e's prompt tokens; the same for every layer.
    CheapEmbed { model: usize, tensor: String, tokens: Vec<Vec<u32>> },
}
