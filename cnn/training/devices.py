"""One model on several devices of this host: data-parallel replicas through the Keras
backend's own distribution (TensorFlow's `MirroredStrategy`, or `keras.distribution.DataParallel`
with `KERAS_BACKEND=jax`).

Each replica takes `batch_size` images a step, so the global batch is `batch_size` times the
replicas, and the peak learning rate is scaled by the same factor (the linear scaling rule of
Goyal et al. 2017, "Accurate, Large Minibatch SGD"; the warm-up epochs of the cosine schedule
are what that rule needs at its start).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import keras

from cnn.errors import InputError


class DevicesError(InputError):
    """More devices asked for than this host has; the message names what it has."""


def training_devices(requested: int | None) -> list[str]:
    """The devices one model trains on: `requested` of this host's GPUs (or, without GPUs, of
    its CPU devices); unset: every GPU, else the one CPU."""
    gpus = devices_of_kind("gpu")
    available = gpus or devices_of_kind("cpu")
    if requested is None:
        return gpus or available[:1]
    if requested > len(available):
        kind = "GPU" if gpus else "CPU device"
        raise DevicesError(
            f"--devices {requested}: this host has {len(available)} {kind}"
            f"{'s' if len(available) != 1 else ''} ({', '.join(available)})"
        )
    return available[:requested]


def devices_of_kind(kind: str) -> list[str]:
    """The backend's devices of `kind` (`gpu`, `cpu`), none when it has no such platform (JAX
    raises for a platform it lacks)."""
    try:
        return keras.distribution.list_devices(kind)
    except RuntimeError:
        return []


@contextmanager
def replicated(devices: list[str]) -> Iterator[None]:
    """Models built, compiled and fitted in the block train one replica on each of `devices`
    (nothing changes for a single device)."""
    if len(devices) <= 1:
        yield
        return
    if keras.backend.backend() == "jax":
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield
        finally:
            keras.distribution.set_distribution(previous)
        return
    with _mirrored_strategy(tuple(devices)).scope():
        yield


@cache
def _mirrored_strategy(devices: tuple[str, ...]):
    """One `MirroredStrategy` per set of devices for the process: a second strategy over the
    same devices reuses the first one's collective keys, and the next model of another shape
    fails its first gradient reduction ("Shape mismatch in the collective instance")."""
    import tensorflow as tf

    # Keras names devices `gpu:0`; TensorFlow's strategies want `/gpu:0`.
    return tf.distribute.MirroredStrategy([f"/{device.lstrip('/')}" for device in devices])
