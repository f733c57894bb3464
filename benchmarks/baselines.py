"""Baselines for the throughput benchmarks: the ConvNet as plain PyTorch and as the course's Keras.

Both compute the project's architecture (Keras 'same' padding, conv -> pool -> ReLU, dropout 0.5
before fc6 and fc7) with their framework's defaults, so that the benchmarks can say how much the
project's own kernels and settings add. TensorFlow is never a dependency: :func:`keras_step`
returns None when it is not installed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: A training step on (uint8 NHWC images, int64 labels), or an inference pass on images.
Step = Callable[[torch.Tensor, torch.Tensor], object]


def plain_convnet(num_classes: int = 190, widths: tuple[int, ...] = (96, 192, 288, 288, 256),
                  fc_width: int = 2048) -> nn.Sequential:
    """The ConvNet as a plain ``nn.Sequential`` with torch's defaults (init, NCHW, kernels).

    'same' padding the plain way: ``ZeroPad2d`` + ``Conv2d`` for the even 4x4 kernel, ``Conv2d``'s
    own ``padding`` for the odd ones; max-pooling 3x3/2 with ``ceil_mode`` (on the even sizes
    here exactly Keras' 'same'). With the project's weights it computes the project's function.
    """
    w1, w2, w3, w4, w5 = widths
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(3, w1, 4), pool(), nn.ReLU(),
        nn.Conv2d(w1, w2, 5, padding=2), pool(), nn.ReLU(),
        nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w3, w4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w4, w5, 3, padding=1), pool(), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(w5 * 8 * 8, fc_width), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(fc_width, fc_width), nn.ReLU(),
        nn.Linear(fc_width, num_classes))


def plain_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> contiguous float NCHW in [0, 1], as a plain training script converts."""
    return images.permute(0, 3, 1, 2).float().div(255).contiguous()


def plain_train_step(num_classes: int, precision: str) -> Step:
    """A training step of :func:`plain_convnet`: mean cross-entropy, Adam(lr 1e-4, amsgrad) with
    torch's default implementation, bf16 through ``torch.autocast``."""
    model = plain_convnet(num_classes).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, amsgrad=True)
    bf16 = precision == "bf16"

    def step(images: torch.Tensor, labels: torch.Tensor) -> object:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = model(plain_input(images))
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return step


def plain_codes(num_classes: int, precision: str) -> Step:
    """Inference of :func:`plain_convnet` up to fc7 (the layer-7 code), torch's defaults."""
    model = plain_convnet(num_classes).eval()
    trunk = model[:-1]
    bf16 = precision == "bf16"

    def codes(images: torch.Tensor, labels: torch.Tensor) -> object:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return trunk(plain_input(images)).float()

    return codes


def keras_convnet(num_classes: int = 190):  # noqa: ANN201  (a tf.keras.Model)
    """The course's Keras model (Sequential, 'same' padding, conv -> pool -> ReLU), or None
    without TensorFlow."""
    try:
        import tensorflow as tf  # noqa: PLC0415
    except ImportError:
        return None
    L = tf.keras.layers
    return tf.keras.Sequential([
        tf.keras.Input((64, 64, 3)),
        L.Conv2D(96, 4, padding="same"), L.MaxPooling2D(3, 2, padding="same"), L.ReLU(),
        L.Conv2D(192, 5, padding="same"), L.MaxPooling2D(3, 2, padding="same"), L.ReLU(),
        L.Conv2D(288, 3, padding="same", activation="relu"),
        L.Conv2D(288, 3, padding="same", activation="relu"),
        L.Conv2D(256, 3, padding="same"), L.MaxPooling2D(3, 2, padding="same"), L.ReLU(),
        L.Flatten(), L.Dropout(0.5), L.Dense(2048, activation="relu"), L.Dropout(0.5),
        L.Dense(2048, activation="relu"), L.Dense(num_classes)])


def _keras_threads(threads: int) -> None:
    import tensorflow as tf  # noqa: PLC0415

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised
        pass


def keras_train_step(num_classes: int, threads: int) -> Step | None:
    """A ``train_on_batch`` of :func:`keras_convnet` (Adam lr 1e-4, amsgrad, cross-entropy; uint8
    NHWC converted to float in [0, 1] as the course did), or None without TensorFlow."""
    model = keras_convnet(num_classes)
    if model is None:
        return None
    import tensorflow as tf  # noqa: PLC0415

    _keras_threads(threads)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4, amsgrad=True),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def step(images: torch.Tensor, labels: torch.Tensor) -> object:
        return model.train_on_batch(images.numpy().astype("float32") / 255.0, labels.numpy())

    return step


def keras_codes(num_classes: int, threads: int) -> Step | None:
    """Inference of :func:`keras_convnet` up to fc7, or None without TensorFlow."""
    model = keras_convnet(num_classes)
    if model is None:
        return None
    import tensorflow as tf  # noqa: PLC0415

    _keras_threads(threads)
    trunk = tf.keras.Model(model.inputs, model.layers[-2].output)

    def codes(images: torch.Tensor, labels: torch.Tensor) -> object:
        return trunk.predict_on_batch(images.numpy().astype("float32") / 255.0)

    return codes
