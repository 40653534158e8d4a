"""Digit classifiers for coherence: architectures, training, storage.

One classifier per modality; its architecture is chosen statically by the
image shape (`ARCHITECTURES`), so `classify(clf_params, name, x)` needs no
per-dataset branch:

* `[28, 28, 3]` (PolyMNIST): `ClfImg` below;
* `[28, 28, 1]` (MNIST) and `[32, 32, 3]` (SVHN): `DigitClf`, the MNIST /
  SVHN classifiers of MMVAE (iffsid/mmvae `src/report/helper.py`,
  `MNIST_Classifier` / `SVHN_Classifier`, used by `analyse_ms.py`) that
  DMVAE reuses (seqam-lab/DMVAE `mnist_svhn/classifier.py`):

    Conv(C->10, 5) -> MaxPool 2 -> ReLU -> Conv(10->20, 5) -> Dropout2d(0.5)
    -> MaxPool 2 -> ReLU -> flatten in C,H,W order (320 MNIST / 500 SVHN)
    -> Linear(->50) -> ReLU -> Dropout(0.5) -> Linear(50->10) -> log_softmax

  (valid convolutions; `features` returns the 50-d penultimate ReLU
  output). Their pretrained weights are not available offline either.
  Measured: the MNIST `DigitClf` trained on the real MNIST train set
  (../shared/data, 60,000 digits; Adam 1e-3, batch 128, seed 0, 2 epochs,
  145 s on the shared 2-core CPU) reaches 96.9 % test accuracy (t10k); the
  SVHN one is untested on real data (SVHN is not available offline).

The coherence classifiers of MMVAE+ on PolyMNIST (from MoPoE;
official_reference.md section 9), in NHWC:

  Conv(3->10, 4, s2, p1) -> Dropout2d(0.5) -> ReLU
  -> Conv(10->20, 4, s2, p1) -> Dropout2d(0.5) -> ReLU
  -> flatten in C,H,W order (980) -> Linear(980->128) -> Dropout(0.5) -> ReLU
  -> Linear(128->10) -> log_softmax

Dropout2d drops whole channels (one Bernoulli draw per example and channel).
Initialisers are PyTorch's defaults, as in `models/polymnist.py`. The
C,H,W flatten keeps PyTorch weights portable (conv kernels OIHW -> HWIO).

The pretrained official weights are not available offline (targets.md
section 1), so the project trains its own and must report their test
accuracy with every coherence number. Command line:

  python -m mmvaeplus_jax.evaluation.classifiers --dataset rebuilt \
      --data_dir DIR --manual_dir ../shared/data --out CLF_DIR --epochs 15

writes `CLF_DIR/<modality>/` (one orbax checkpoint each) and
`CLF_DIR/classifiers.json` (modalities, test accuracies, training config).
Measured on `rebuilt` (CPU, Adam 1e-3, batch 128, seed 0): test accuracy
m0..m4 = 93.3 / 97.8 / 97.8 / 95.0 / 92.4 % after 15 epochs (mean 95.3 %;
93.3 % after 5 epochs). The small network with heavy dropout is the limit
(m4 plateaus near 92 % by epoch 10 at lr 1e-3 or 3e-3), so coherence is
capped by these numbers: always report them beside it.

MNIST-SVHN (`mnist_svhn` builder): train on `mnist_svhn/dm1` (or dm30; with
an `<name>_index` feature each distinct source item is used once, see
`distinct_items`):

  python -m mmvaeplus_jax.evaluation.classifiers --dataset mnist_svhn/dm1 \
      --data_dir DIR --manual_dir DIR_WITH_MNIST_AND_SVHN --out CLF_DIR

`classifiers.json` records each modality's image shape (`image_shapes`);
files without it (written before) are PolyMNIST `ClfImg`s.

All inputs are images `[N, *image_shape]`, uint8 (divided by 255 here) or
float (used as they are, e.g. unclamped decoder means).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from mmvaeplus_jax.models import polymnist

Array = jax.Array
Params = Any

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 3)
FEATURE_DIM = 128
METADATA_FILE = 'classifiers.json'
TRAIN_COMMAND = (
    'python -m mmvaeplus_jax.evaluation.classifiers --dataset rebuilt'
    ' --data_dir DATA_DIR --manual_dir ../shared/data --out {out}'
    ' --epochs 15'
)


def _conv(features: int, fan_in_channels: int, name: str) -> nn.Conv:
  return nn.Conv(
      features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
      kernel_init=polymnist.torch_kernel_init,
      bias_init=polymnist.torch_bias_init(fan_in_channels * 16), name=name)


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
  return nn.Dense(
      features, kernel_init=polymnist.torch_kernel_init,
      bias_init=polymnist.torch_bias_init(fan_in), name=name)


def to_float(images) -> Array:
  """uint8 images -> float32 in [0, 1]; float images unchanged."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images


class ClfImg(nn.Module):
  """The official image-to-digit classifier (MoPoE `ClfImg`).

  Attributes:
    dropout_rate: rate of the three dropout layers (official 0.5).
  """

  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool = False,
               return_features: bool = False):
    """Classifies images.

    Args:
      x: `[N, 28, 28, 3]` images (uint8 or float).
      train: enables dropout (needs a 'dropout' rng).
      return_features: return the `[N, 128]` penultimate activations (after
        the ReLU; dropout is off in eval mode) instead of the log-probs.

    Returns:
      `[N, 10]` log-probabilities, or `[N, 128]` features.
    """
    x = to_float(x)
    h = _conv(10, x.shape[-1], 'conv_0')(x)  # [N, 14, 14, 10]
    # Dropout2d: one draw per (example, channel), shared over H and W.
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                   deterministic=not train)(h)
    h = nn.relu(h)
    h = _conv(20, 10, 'conv_1')(h)  # [N, 7, 7, 20]
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                   deterministic=not train)(h)
    h = nn.relu(h)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape((h.shape[0], -1))  # [N, 980]
    h = _dense(FEATURE_DIM, h.shape[-1], 'fc_0')(h)
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    h = nn.relu(h)  # [N, 128]
    if return_features:
      return h
    logits = _dense(NUM_CLASSES, FEATURE_DIM, 'fc_1')(h)
    return jax.nn.log_softmax(logits, axis=-1)


def _max_pool(x):  # F.max_pool2d(x, 2)
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class DigitClf(nn.Module):
  """MMVAE's MNIST / SVHN digit classifier (module docstring).

  Attributes:
    dropout_rate: rate of Dropout2d and Dropout (PyTorch default 0.5).
  """

  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool = False,
               return_features: bool = False):
    """`[N, 28, 28, 1]` or `[N, 32, 32, 3]` -> `[N, 10]` log-probs (or
    `[N, 50]` features)."""
    x = to_float(x)
    conv = lambda c, fan_in, name: nn.Conv(
        c, (5, 5), padding='VALID', kernel_init=polymnist.torch_kernel_init,
        bias_init=polymnist.torch_bias_init(fan_in * 25), name=name)
    h = nn.relu(_max_pool(conv(10, x.shape[-1], 'conv_0')(x)))
    h = conv(20, 10, 'conv_1')(h)
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                   deterministic=not train)(h)  # Dropout2d
    h = nn.relu(_max_pool(h))  # [N, 4, 4, 20] MNIST, [N, 5, 5, 20] SVHN
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape((h.shape[0], -1))
    h = nn.relu(_dense(50, h.shape[-1], 'fc_0')(h))
    if return_features:
      return h
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = _dense(NUM_CLASSES, 50, 'fc_1')(h)
    return jax.nn.log_softmax(logits, axis=-1)


# Image shape -> classifier module (chosen statically from the input shape).
ARCHITECTURES = {
    IMAGE_SHAPE: ClfImg(),  # PolyMNIST
    (28, 28, 1): DigitClf(),  # MNIST (MNIST-SVHN)
    (32, 32, 3): DigitClf(),  # SVHN (MNIST-SVHN)
}


def module_for(image_shape) -> nn.Module:
  """The classifier module for images of `image_shape` (`[H, W, C]`)."""
  image_shape = tuple(int(d) for d in image_shape)
  if image_shape not in ARCHITECTURES:
    raise ValueError(
        f'no digit classifier for images of shape {list(image_shape)}; known'
        f' shapes: {[list(s) for s in ARCHITECTURES]}')
  return ARCHITECTURES[image_shape]


def _abstract_params(image_shape=IMAGE_SHAPE):
  """ShapeDtypeStructs of the params (tracing only, nothing compiles)."""
  image_shape = tuple(image_shape)
  return jax.eval_shape(
      lambda: module_for(image_shape).init(
          jax.random.key(0), jnp.zeros((1,) + image_shape))['params'])


def image_shape_of(params: Params) -> tuple[int, ...]:
  """The image shape whose architecture `params` belong to."""
  shapes = jax.tree.map(lambda x: tuple(x.shape), params)
  for image_shape in ARCHITECTURES:
    want = jax.tree.map(lambda x: tuple(x.shape),
                        _abstract_params(image_shape))
    if jax.tree.structure(want) == jax.tree.structure(shapes) and (
        jax.tree.leaves(want) == jax.tree.leaves(shapes)):
      return image_shape
  raise ValueError('params match no classifier architecture of'
                   f' {[list(s) for s in ARCHITECTURES]}')


@functools.partial(jax.jit, static_argnames=('image_shape',))
def init(key, image_shape=IMAGE_SHAPE) -> Params:
  """Fresh params of the classifier for `image_shape` (default PolyMNIST's
  `ClfImg`), PyTorch's default initialisation.

  Every kernel and bias of a layer is U(+-1/sqrt(fan_in)) (fan_in = kh kw
  c_in for a conv, d_in for a dense layer), the distribution the module's own
  initialisers give; drawn here with a single random call, because Flax's
  per-parameter key derivation takes ~10 s to compile on CPU.
  """
  abstract = _abstract_params(image_shape)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  sizes = [math.prod(leaf.shape) for _, leaf in flat]
  u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
  leaves, offset = [], 0
  for (path, leaf), size in zip(flat, sizes):
    layer = path[0].key
    fan_in = math.prod(abstract[layer]['kernel'].shape[:-1])
    leaves.append(u[offset:offset + size].reshape(leaf.shape)
                  / math.sqrt(fan_in))
    offset += size
  return jax.tree_util.tree_unflatten(treedef, leaves)


@jax.jit
def log_probs(params: Params, images) -> Array:
  """Eval-mode log-probabilities `[N, 10]` of images `[N, *image_shape]`
  (the architecture follows from the image shape)."""
  return module_for(images.shape[1:]).apply({'params': params}, images)


@jax.jit
def features(params: Params, images) -> Array:
  """Eval-mode penultimate features (for FD_clf): `[N, 128]` for `ClfImg`,
  `[N, 50]` for `DigitClf`."""
  return module_for(images.shape[1:]).apply(
      {'params': params}, images, return_features=True)


def classify(clf_params: Mapping[str, Params], name: str, images) -> Array:
  """Log-probs `[N, 10]` of modality `name`'s classifier.

  The `classify(clf_params, name, x)` contract of `evaluation.coherence`:
  `clf_params` is `{modality name: params}` (see `load_classifiers`); the
  architecture is the one registered for `x`'s image shape.
  """
  return log_probs(clf_params[name], images)


# ------------------------------------------------------------------ training


def _loss(params, images, labels, dropout_key):
  lp = module_for(images.shape[1:]).apply(
      {'params': params}, images, train=True, rngs={'dropout': dropout_key})
  return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=-1))


@functools.partial(jax.jit, static_argnames=('lr',))
def _train_step(params, opt_state, images, labels, idx, key, *, lr):
  """One Adam step on the examples `idx [batch]` of the whole training set.

  (A Python loop of jitted steps: on XLA:CPU a `lax.scan` over the steps runs
  the convolutions about 5x slower.)
  """
  loss, grads = jax.value_and_grad(_loss)(params, images[idx], labels[idx], key)
  updates, opt_state = optax.adam(lr).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def train_classifier(
    key,
    images,
    labels,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> Params:
  """Trains one classifier (by image shape) with Adam; deterministic for a
  key.

  Each epoch draws a permutation from `fold_in(key, epoch)` and takes
  `N // batch_size` steps (the last partial batch is dropped); dropout keys
  come from the same epoch key and the step index.

  Args:
    key: PRNG key (init, permutations, dropout).
    images: `[N, *image_shape]` uint8 or float in [0, 1], a shape of
      `ARCHITECTURES`.
    labels: `[N]` integer digit labels.
    epochs: number of passes over the data.
    batch_size: examples per Adam step (capped at N).
    lr: Adam learning rate.
    on_epoch_end: optional `(epoch, mean train loss)` hook for logging.

  Returns:
    Trained params.
  """
  images = jnp.asarray(images)
  labels = jnp.asarray(labels, jnp.int32)
  if (images.ndim != 4 or tuple(images.shape[1:]) not in ARCHITECTURES
      or labels.shape != images.shape[:1]):
    raise ValueError(
        f'images must be [N, H, W, C] with [H, W, C] in'
        f' {[list(s) for s in ARCHITECTURES]} and labels [N], got'
        f' {list(images.shape)} and {list(labels.shape)}')
  batch_size = int(min(batch_size, images.shape[0]))
  init_key, loop_key = jax.random.split(key)
  params = init(init_key, tuple(images.shape[1:]))
  opt_state = optax.adam(lr).init(params)
  steps = images.shape[0] // batch_size
  for epoch in range(epochs):
    epoch_key = jax.random.fold_in(loop_key, epoch)
    perm = jax.random.permutation(jax.random.fold_in(epoch_key, 0),
                                  images.shape[0])
    perm = perm[:steps * batch_size].reshape((steps, batch_size))
    drop_key = jax.random.fold_in(epoch_key, 1)
    losses = []
    for i in range(steps):
      params, opt_state, loss = _train_step(
          params, opt_state, images, labels, perm[i],
          jax.random.fold_in(drop_key, i), lr=float(lr))
      losses.append(loss)
    if on_epoch_end is not None:
      on_epoch_end(epoch, float(jnp.mean(jnp.stack(losses))))
  return params


@jax.jit
def _correct(params, images, labels, mask):
  pred = jnp.argmax(log_probs(params, images), axis=-1)
  return jnp.sum((pred == labels) & mask)


def accuracy(params: Params, images, labels, *, batch_size: int = 1000
             ) -> float:
  """Eval-mode accuracy (exact count over all N examples).

  Args:
    params: classifier params.
    images: `[N, *image_shape]` uint8 or float.
    labels: `[N]` integer labels.
    batch_size: examples per jitted call (the last batch is padded).
  """
  images, labels = np.asarray(images), np.asarray(labels, np.int32)
  n = len(labels)
  if n == 0:
    raise ValueError('accuracy needs at least one example, got 0')
  batch_size = min(batch_size, n)
  correct = 0
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    valid = len(y)
    if valid < batch_size:  # pad to keep one compiled shape
      pad = batch_size - valid
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
      y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)])
    mask = np.arange(batch_size) < valid
    correct += int(_correct(params, x, y, mask))
  return correct / n


# ------------------------------------------------------------------ storage


def save_classifiers(
    directory: os.PathLike | str,
    clf_params: Mapping[str, Params],
    *,
    metadata: Mapping[str, Any] | None = None,
) -> None:
  """Writes one orbax checkpoint per modality and `classifiers.json`.

  Args:
    directory: output folder (created; existing checkpoints are replaced).
    clf_params: `{modality name: classifier params}`.
    metadata: JSON-serialisable extras (test accuracies, training config),
      stored beside the modality list and each modality's image shape.
  """
  directory = pathlib.Path(directory).expanduser().absolute()
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    for name, params in clf_params.items():
      ckptr.save(directory / name, params, force=True)
    ckptr.wait_until_finished()
  meta = {'modalities': list(clf_params),
          'image_shapes': {n: list(image_shape_of(p))
                           for n, p in clf_params.items()}}
  meta.update(dict(metadata or {}))
  (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2) + '\n')


def load_classifiers(
    directory: os.PathLike | str,
    names: Sequence[str] | None = None,
) -> tuple[dict[str, Params], dict[str, Any]]:
  """Reads classifiers written by `save_classifiers` / `main`.

  Args:
    directory: the folder given as `--out` when training.
    names: modalities to load (default: all listed in `classifiers.json`).

  Returns:
    (`{name: params}`, metadata dict from `classifiers.json`).

  Raises:
    FileNotFoundError: the folder, its `classifiers.json` or a requested
      modality's checkpoint is missing; the message names the folder and the
      command that trains the classifiers.
  """
  directory = pathlib.Path(directory).expanduser().absolute()
  meta_path = directory / METADATA_FILE
  hint = ('Train them with:\n  ' + TRAIN_COMMAND.format(out=directory))
  if not meta_path.is_file():
    raise FileNotFoundError(
        f'No coherence classifiers in {directory} ({METADATA_FILE} not'
        f' found). {hint}')
  meta = json.loads(meta_path.read_text())
  names = list(meta['modalities'] if names is None else names)
  missing = [n for n in names if not (directory / n).is_dir()]
  if missing:
    raise FileNotFoundError(
        f'No coherence classifier checkpoint for modalities {missing} in'
        f' {directory} (it holds {meta["modalities"]}). {hint}')
  # Files without image_shapes predate them: PolyMNIST ClfImgs.
  shapes = meta.get('image_shapes', {})
  with ocp.StandardCheckpointer() as ckptr:
    params = {
        n: ckptr.restore(directory / n,
                         _abstract_params(tuple(shapes.get(n, IMAGE_SHAPE))))
        for n in names}
  return params, meta


# ---------------------------------------------------------------- command line


def distinct_items(split: Mapping[str, np.ndarray], name: str
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of modality `name`: each distinct source item once
  (first occurrence, in stored order) when the split has an `<name>_index`
  feature, else all examples."""
  index = split.get(f'{name}_index')
  if index is None:
    return split[name], split['label']
  _, first = np.unique(np.asarray(index), return_index=True)
  first = np.sort(first)
  return np.asarray(split[name])[first], np.asarray(split['label'])[first]


def image_names(split: Mapping[str, np.ndarray]) -> list[str]:
  """The image features of a split (`[N, H, W, C]`), sorted."""
  return sorted(k for k, v in split.items() if np.ndim(v) == 4)


def train_and_evaluate(
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    seed: int = 0,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Params], dict[str, float]]:
  """Trains one classifier per modality; returns params and test accuracy.

  Modality i uses key `fold_in(key(seed), i)`. Splits with an
  `<name>_index` feature (MNIST-SVHN's pairs, which repeat each source item
  30 times) train and test on each distinct item once (`distinct_items`).
  """
  key = jax.random.key(seed)
  clf_params, accs = {}, {}
  for i, name in enumerate(names):
    start = time.time()
    train_x, train_y = distinct_items(train, name)
    test_x, test_y = distinct_items(test, name)
    clf_params[name] = train_classifier(
        jax.random.fold_in(key, i), train_x, train_y,
        epochs=epochs, batch_size=batch_size, lr=lr,
        on_epoch_end=lambda e, l, n=name: log(
            f'  {n} epoch {e + 1}/{epochs}: train loss {l:.4f}'))
    accs[name] = accuracy(clf_params[name], test_x, test_y)
    log(f'{name}: test accuracy {accs[name]:.4f}'
        f' ({time.time() - start:.1f} s)')
  return clf_params, accs


def main(argv: Sequence[str] | None = None) -> None:
  """Trains and stores the coherence classifiers of a dataset."""
  parser = argparse.ArgumentParser(
      description='Train one digit classifier per image modality (PolyMNIST '
      'ClfImg, MNIST / SVHN DigitClf) on the train split; store them with '
      'their test accuracies.')
  parser.add_argument('--dataset', default='mini',
                      help='PolyMNIST config (mini, rebuilt, official) or a'
                      ' full name such as mnist_svhn/dm1')
  parser.add_argument('--data_dir', required=True,
                      help='TFDS data directory')
  parser.add_argument('--manual_dir', default=None,
                      help='inputs of rebuilt / official (../shared/data)')
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--epochs', type=int, default=15)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  # Imported here: TFDS is only needed by the command line.
  from mmvaeplus_jax.input import builders  # pylint: disable=g-import-not-at-top

  start = time.time()
  train = builders.load_split(args.dataset, 'train', args.data_dir,
                              manual_dir=args.manual_dir)
  test = builders.load_split(args.dataset, 'test', args.data_dir,
                             manual_dir=args.manual_dir)
  names = image_names(train)
  print(f'Loaded {args.dataset}: train {len(train["label"])}, test'
        f' {len(test["label"])} ({time.time() - start:.1f} s)')
  clf_params, accs = train_and_evaluate(
      train, test, names, seed=args.seed, epochs=args.epochs,
      batch_size=args.batch_size, lr=args.lr)
  metadata = {
      'test_accuracy': accs,
      'mean_test_accuracy': float(np.mean(list(accs.values()))),
      'config': {
          'dataset': args.dataset, 'epochs': args.epochs,
          'batch_size': args.batch_size, 'lr': args.lr, 'seed': args.seed,
          'optimizer': 'adam', 'num_train': int(len(train['label'])),
          'num_test': int(len(test['label'])),
          # Distinct items each classifier saw (< num_train for MNIST-SVHN,
          # whose pairs repeat items; see distinct_items).
          'num_train_items': {n: int(len(distinct_items(train, n)[1]))
                              for n in names},
      },
  }
  save_classifiers(args.out, clf_params, metadata=metadata)
  print(f'Mean test accuracy {metadata["mean_test_accuracy"]:.4f}; saved to'
        f' {pathlib.Path(args.out).absolute()} ({time.time() - start:.1f} s)')


if __name__ == '__main__':
  main()
