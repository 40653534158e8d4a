"""mmvaeplus_jax: MMVAE+ and multimodal VAEs in JAX/Flax.

The small public API: distributions (log-densities, samplers, scale maps),
objectives (log-weights, the stratified MoE bound), estimators (IWAE and DReG
surrogates), the model interface (`MultimodalVAE`, models/base.py) with the
MMVAE+ container, and `load_run` (a trained run's model and params).
The package's floors and where new code goes: docs/architecture.md.

Importing it has no side effects: the opt-in XLA:CPU convolution setting is
applied by the entry points (`infra.xla_cpu.configure()`), never on import.
"""

from mmvaeplus_jax.core import distributions
from mmvaeplus_jax.core import estimators
from mmvaeplus_jax.core import objectives
from mmvaeplus_jax.core.types import Noise
from mmvaeplus_jax.core.types import Posteriors
from mmvaeplus_jax.experiments.runs import load_run
from mmvaeplus_jax.models.base import Modality
from mmvaeplus_jax.models.base import MultimodalVAE
from mmvaeplus_jax.models.mmvaeplus import MMVAEPlus

__version__ = '0.1.0.dev0'

__all__ = [
    'distributions', 'estimators', 'objectives',
    'MMVAEPlus', 'Modality', 'MultimodalVAE', 'Noise', 'Posteriors',
    'load_run',
]
