"""Training the digit classifiers of coherence: augmentation, recipes, trainer.

`train_classifier(key, images [N, *image_shape], labels [N])` trains one
classifier of `classifier_nets` with Adam, deterministically for a key;
`train_and_evaluate` trains one per modality of a dataset split and returns
each one's test accuracy (`accuracy`, exact over all examples).

Each architecture has a recipe (`RECIPES`, the defaults of every option left
None): 'official' and 'digit' Adam 1e-3, batch 128, 15 epochs, no
augmentation; 'wide' Adam with a one-cycle cosine schedule peaking at 3e-3,
batch 128, 14 epochs, each training batch translated by a random
whole-pixel shift in [-2, 2]^2 (`random_translate`, edges replicated, keys
from the step key); 'species_image' (CUB) the same one-cycle Adam, batch
32, 40 epochs, shifts in [-6, 6]^2 and random horizontal flips
(`random_flip`); 'species_caption' one-cycle Adam 2e-3, batch 64, 12
epochs, no augmentation. The species classifiers' class count comes from
the labels (`num_classes`, default max + 1), the caption classifier's
vocabulary from the caller (`vocab_size`). Measured accuracies:
docs/results.md (digits), docs/cub.md (species).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmvaeplus_jax.evaluation import classifier_nets as nets

Array = jax.Array
Params = Any

# The recipe of the 'wide' PolyMNIST classifier (ClfImgWide).
WIDE_EPOCHS = 14
WIDE_LR = 3e-3
WIDE_MAX_SHIFT = 2


def shift_images(images, shifts) -> Array:
  """Translates each image by whole pixels, edges replicated.

  `out[n, i, j] = images[n, clip(i - dy_n), clip(j - dx_n)]` (clip to the
  image), so a positive `dy` moves the content down and a positive `dx`
  moves it right; shift 0 is the identity.

  Args:
    images: `[N, H, W, C]` (any dtype; kept).
    shifts: `[N, 2]` integer (dy, dx) per image.

  Returns:
    `[N, H, W, C]` shifted images.
  """
  images = jnp.asarray(images)
  shifts = jnp.asarray(shifts, jnp.int32)
  _, h, w, _ = images.shape
  rows = jnp.clip(jnp.arange(h)[None] - shifts[:, :1], 0, h - 1)  # [N, H]
  cols = jnp.clip(jnp.arange(w)[None] - shifts[:, 1:], 0, w - 1)  # [N, W]
  out = jnp.take_along_axis(images, rows[:, :, None, None], axis=1)
  return jnp.take_along_axis(out, cols[:, None, :, None], axis=2)


def random_translate(key, images, max_shift: int) -> Array:
  """Random translations by up to `max_shift` pixels (uniform integers in
  `[-max_shift, max_shift]` per image and axis; `shift_images`).

  Args:
    key: PRNG key (the only source of randomness).
    images: `[N, H, W, C]`.
    max_shift: largest shift in pixels (0: images unchanged).

  Returns:
    `[N, H, W, C]` shifted images, same dtype.
  """
  if max_shift < 0:
    raise ValueError(f'max_shift must be >= 0, got {max_shift}')
  if max_shift == 0:
    return jnp.asarray(images)
  shifts = jax.random.randint(key, (images.shape[0], 2), -max_shift,
                              max_shift + 1)
  return shift_images(images, shifts)


def random_flip(key, images) -> Array:
  """Mirrors each image left-right with probability 1/2.

  Args:
    key: PRNG key (the only source of randomness).
    images: `[N, H, W, C]`.

  Returns:
    `[N, H, W, C]`, same dtype.
  """
  images = jnp.asarray(images)
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


# Training recipe per architecture (defaults of `train_classifier`,
# `train_and_evaluate` and the command line): epochs, Adam learning rate
# (peak of a one-cycle cosine schedule or constant), batch size, random
# translation of up to `max_shift` pixels, random horizontal flips.
RECIPES = {
    'official': dict(epochs=15, lr=1e-3, lr_schedule='constant',
                     batch_size=128, max_shift=0, flip=False),
    'wide': dict(epochs=WIDE_EPOCHS, lr=WIDE_LR, lr_schedule='onecycle',
                 batch_size=128, max_shift=WIDE_MAX_SHIFT, flip=False),
    'digit': dict(epochs=15, lr=1e-3, lr_schedule='constant',
                  batch_size=128, max_shift=0, flip=False),
    'species_image': dict(epochs=40, lr=3e-3, lr_schedule='onecycle',
                          batch_size=32, max_shift=6, flip=True),
    'species_caption': dict(epochs=12, lr=2e-3, lr_schedule='onecycle',
                            batch_size=64, max_shift=0, flip=False),
}
LR_SCHEDULES = ('constant', 'onecycle')


def _loss(params, images, labels, dropout_key):
  lp = nets.module_of_params(params).apply(
      {'params': params}, images, train=True, rngs={'dropout': dropout_key})
  return -jnp.mean(jnp.take_along_axis(lp, labels[:, None], axis=-1))


def _optimizer(lr: float, lr_schedule: str, total_steps: int):
  """Adam with a constant rate or a one-cycle cosine schedule (warm-up over
  the first 30 % of `total_steps` to `lr`, then cosine decay)."""
  if lr_schedule == 'constant':
    return optax.adam(lr)
  if lr_schedule == 'onecycle':
    return optax.adam(optax.cosine_onecycle_schedule(max(total_steps, 1), lr))
  raise ValueError(f'unknown lr_schedule {lr_schedule!r}; choose one of'
                   f' {list(LR_SCHEDULES)}')


@functools.partial(
    jax.jit, static_argnames=('lr', 'lr_schedule', 'total_steps',
                              'max_shift', 'flip'))
def _train_step(params, opt_state, images, labels, idx, key, *, lr,
                lr_schedule, total_steps, max_shift, flip=False):
  """One Adam step on the examples `idx [batch]` of the whole training set,
  randomly translated by up to `max_shift` pixels (and, with `flip`,
  mirrored; the flip key is `fold_in(key, 7)`, so the other keys are those
  of the recipes without flips).

  (A Python loop of jitted steps: on XLA:CPU a `lax.scan` over the steps runs
  the convolutions about 5x slower.)
  """
  x = images[idx]
  dropout_key = key  # as before translations (the official recipe)
  if max_shift:
    shift_key, dropout_key = jax.random.split(key)
    x = random_translate(shift_key, x, max_shift)
  if flip:
    x = random_flip(jax.random.fold_in(key, 7), x)
  loss, grads = jax.value_and_grad(_loss)(params, x, labels[idx], dropout_key)
  updates, opt_state = _optimizer(lr, lr_schedule, total_steps).update(
      grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def recipe(arch: str, **overrides) -> dict[str, Any]:
  """`RECIPES[arch]` with the non-None `overrides` applied."""
  if arch not in RECIPES:
    raise ValueError(f'unknown classifier architecture {arch!r}; choose one'
                     f' of {list(RECIPES)}')
  out = dict(RECIPES[arch])
  unknown = set(overrides) - set(out)
  if unknown:
    raise ValueError(f'unknown recipe fields {sorted(unknown)}')
  out.update({k: v for k, v in overrides.items() if v is not None})
  return out


def train_classifier(
    key,
    images,
    labels,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    arch: str | None = None,
    lr_schedule: str | None = None,
    max_shift: int | None = None,
    flip: bool | None = None,
    num_classes: int | None = None,
    vocab_size: int | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> Params:
  """Trains one classifier with Adam; deterministic for a key.

  Each epoch draws a permutation from `fold_in(key, epoch)` and takes
  `N // batch_size` steps (the last partial batch is dropped); dropout and
  translation keys come from the same epoch key and the step index. Every
  option left None takes the value of `RECIPES[arch]`.

  Args:
    key: PRNG key (init, permutations, dropout).
    images: `[N, *image_shape]` uint8 or float in [0, 1], a shape of
      `classifier_nets.ARCHITECTURES` (or int caption ids `[N, 32]`).
    labels: `[N]` integer labels.
    epochs: number of passes over the data.
    batch_size: examples per Adam step (capped at N).
    lr: Adam learning rate (the peak of the one-cycle schedule).
    arch: architecture name (`classifier_nets.ARCHITECTURES[image
      shape]`); None: `DEFAULT_ARCH` of the image shape ('wide' for
      PolyMNIST).
    lr_schedule: 'constant' or 'onecycle' (`_optimizer`).
    max_shift: random translation of the training images, in pixels
      (`random_translate`; 0: none).
    flip: random horizontal flips of the training images (`random_flip`).
    num_classes: species architectures: the class count (None: max label
      + 1); digit ones: None or 10.
    vocab_size: 'species_caption': the vocabulary size of the data
      (required).
    on_epoch_end: optional `(epoch, mean train loss)` hook for logging.

  Returns:
    Trained params.
  """
  images = jnp.asarray(images)
  labels = jnp.asarray(labels, jnp.int32)
  if (tuple(images.shape[1:]) not in nets.ARCHITECTURES
      or labels.shape != images.shape[:1]):
    raise ValueError(
        f'images must be [N, *shape] with shape in'
        f' {[list(s) for s in nets.ARCHITECTURES]} and labels [N], got'
        f' {list(images.shape)} and {list(labels.shape)}')
  arch = nets.check_arch(arch, images.shape[1:])
  if arch in nets.SPECIES_ARCHS and num_classes is None:
    num_classes = int(jnp.max(labels)) + 1
  r = recipe(arch, epochs=epochs, batch_size=batch_size, lr=lr,
             lr_schedule=lr_schedule, max_shift=max_shift, flip=flip)
  epochs, lr, max_shift = int(r['epochs']), float(r['lr']), int(r['max_shift'])
  batch_size = int(min(r['batch_size'], images.shape[0]))
  steps = images.shape[0] // batch_size
  opts = dict(lr=lr, lr_schedule=str(r['lr_schedule']),
              total_steps=epochs * steps, max_shift=max_shift,
              flip=bool(r['flip']))
  init_key, loop_key = jax.random.split(key)
  params = nets.init(init_key, tuple(images.shape[1:]), arch, num_classes,
                     vocab_size)
  opt_state = _optimizer(lr, opts['lr_schedule'], epochs * steps).init(params)
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
          jax.random.fold_in(drop_key, i), **opts)
      losses.append(loss)
    if on_epoch_end is not None:
      on_epoch_end(epoch, float(jnp.mean(jnp.stack(losses))))
  return params


@jax.jit
def _correct(params, images, labels, mask):
  pred = jnp.argmax(nets.log_probs(params, images), axis=-1)
  return jnp.sum((pred == labels) & mask)


def accuracy(params: Params, images, labels, *, batch_size: int = 1000
             ) -> float:
  """Eval-mode accuracy (exact count over all N examples).

  Args:
    params: classifier params.
    images: `[N, *image_shape]` uint8 or float (captions: ids or logits).
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
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    arch: str | None = None,
    lr_schedule: str | None = None,
    max_shift: int | None = None,
    flip: bool | None = None,
    num_classes: int | None = None,
    vocab_size: int | None = None,
    key_offset: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Params], dict[str, float]]:
  """Trains one classifier per modality; returns params and test accuracy.

  Modality i uses key `fold_in(key(seed), key_offset + i)`. Splits with an
  `<name>_index` feature (MNIST-SVHN's pairs, which repeat each source item
  30 times) train and test on each distinct item once (`distinct_items`).
  `arch` (None: `DEFAULT_ARCH` of each modality's image shape) and the
  options left None follow `train_classifier` (`RECIPES[arch]`); `arch`
  is checked against every modality's shape, so give it only for one
  kind of modality. `num_classes` and `vocab_size` go to the species
  architectures (num_classes None: max label + 1 over train and test).
  """
  key = jax.random.key(seed)
  clf_params, accs = {}, {}
  for i, name in enumerate(names):
    start = time.time()
    train_x, train_y = distinct_items(train, name)
    test_x, test_y = distinct_items(test, name)
    name_arch = nets.check_arch(arch, np.shape(train_x)[1:])
    name_epochs = recipe(name_arch, epochs=epochs)['epochs']
    species = name_arch in nets.SPECIES_ARCHS
    name_classes = num_classes
    if species and name_classes is None:
      name_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    clf_params[name] = train_classifier(
        jax.random.fold_in(key, key_offset + i), train_x, train_y,
        epochs=epochs, batch_size=batch_size, lr=lr, arch=name_arch,
        lr_schedule=lr_schedule, max_shift=max_shift, flip=flip,
        num_classes=name_classes if species else None,
        vocab_size=vocab_size if name_arch == 'species_caption' else None,
        on_epoch_end=lambda e, l, n=name, t=name_epochs: log(
            f'  {n} epoch {e + 1}/{t}: train loss {l:.4f}'))
    accs[name] = accuracy(clf_params[name], test_x, test_y)
    log(f'{name}: test accuracy {accs[name]:.4f}'
        f' ({time.time() - start:.1f} s)')
  return clf_params, accs
