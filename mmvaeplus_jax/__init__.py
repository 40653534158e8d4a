"""mmvaeplus_jax: MMVAE+ and multimodal VAEs in JAX/Flax.

The small public API: distributions (log-densities, samplers, scale maps),
objectives (log-weights, the stratified MoE bound), estimators (IWAE and DReG
surrogates), the model interface (`MultimodalVAE`, models/base.py) with the
MMVAE+ container, and `load_run` (a trained run's model and params).
"""

# First: the opt-in XLA:CPU setting must be in XLA_FLAGS before JAX starts
# its CPU client (see xla_cpu.py; off unless MMVAEPLUS_CPU_CONVOLUTIONS=eigen).
from mmvaeplus_jax import xla_cpu

xla_cpu.configure()

from mmvaeplus_jax import distributions  # pylint: disable=g-import-not-at-top,g-bad-import-order
from mmvaeplus_jax import estimators
from mmvaeplus_jax import objectives
from mmvaeplus_jax.models.base import MultimodalVAE
from mmvaeplus_jax.models.mmvaeplus import MMVAEPlus, Modality, Noise, Posteriors
from mmvaeplus_jax.runs import load_run

__version__ = '0.1.0.dev0'

__all__ = [
    'distributions', 'estimators', 'objectives',
    'MMVAEPlus', 'Modality', 'MultimodalVAE', 'Noise', 'Posteriors',
    'load_run',
]
