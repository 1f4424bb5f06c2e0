"""Pure-PyTorch reference implementation of the BiHM: the specification every kernel is checked against.

Installed as ``bihm_triton.reference``; needs only torch (no Triton). Contents:

* :mod:`.philox` — the random stream of SPEC §5 (Philox4x32-10 as Triton computes it);
* :mod:`.layers` — the stochastic binary layer and weight normalization, same signatures as
  :mod:`bihm_triton.ops`;
* :mod:`.bihm` — the model (SPEC §1–4, §6): log p(x, h), log q(h | x), samplers, estimators, losses;
* :mod:`.estimators` — the importance-sampling estimators of SPEC §2 as functions of log-weights;
* :mod:`.enumeration` — exact answers for tiny models.
"""

from .bihm import (
    BiHM,
    EffectiveSampleSize,
    MLPStochasticLayer,
    LogLikelihood,
    PriorLayer,
    PSample,
    QSample,
    StochasticLayer,
    WeightNormStochasticLayer,
    check_sizes,
)
from .enumeration import Enumeration, all_binary, binary_index, exact_enumeration
from .estimators import (
    MeanWithSE,
    bhattacharyya_estimate,
    effective_sample_size,
    log_mean_exp,
    log_mean_exp_with_se,
    log_p_estimate,
    log_p_tilde_star_estimate,
)
from .layers import (
    bernoulli_log_prob,
    bernoulli_sample,
    sbn_log_prob,
    sbn_log_prob_wn,
    sbn_logits,
    sbn_sample,
    sbn_sample_wn,
    weight_norm,
    weight_norm_scale,
)
from .philox import (
    DRAW_STRIDE,
    MAX_SEED,
    STREAM_VERSION,
    RandomStream,
    aligned_start,
    check_draw_fits,
    counters_used,
    draw_offset,
    draw_seed,
    resolve_seed,
    philox4x32,
    philox_uniform,
    uniform_from_uint32,
)

__all__ = [
    "BiHM", "EffectiveSampleSize", "LogLikelihood", "PriorLayer", "PSample", "QSample", "StochasticLayer",
    "WeightNormStochasticLayer", "MLPStochasticLayer", "check_sizes",
    "Enumeration", "all_binary", "binary_index", "exact_enumeration",
    "MeanWithSE", "bhattacharyya_estimate", "effective_sample_size", "log_mean_exp", "log_mean_exp_with_se",
    "log_p_estimate", "log_p_tilde_star_estimate",
    "bernoulli_log_prob", "bernoulli_sample", "sbn_log_prob", "sbn_log_prob_wn", "sbn_logits", "sbn_sample",
    "sbn_sample_wn", "weight_norm", "weight_norm_scale",
    "MAX_SEED", "RandomStream", "counters_used", "draw_seed", "resolve_seed", "philox4x32", "philox_uniform", "uniform_from_uint32",
    "DRAW_STRIDE", "STREAM_VERSION", "aligned_start", "check_draw_fits", "draw_offset",
]
