"""Workarounds for Keras 3.15 behaviours, in one place.

The tf.distribute ones (a model's creation scope, losses and logs under a
strategy) are in `keras_vae._internal.distribution`.
"""

import keras


def set_monitor_modes(callbacks, modes):
    """Gives callbacks that monitor one of a model's metrics in mode "auto"
    (`EarlyStopping`, `ModelCheckpoint`, `ReduceLROnPlateau`) its direction:
    `modes` maps a metric's name to "min" or "max".

    Keras 3.15 infers a direction only for `compile(metrics=...)` metrics,
    and only at the end of the first epoch (`EarlyStopping("val_elbo")` then
    raises, after training an epoch), while `ReduceLROnPlateau` takes every
    metric without "acc" in its name to improve downwards.
    """
    for callback in callbacks or ():
        monitor = getattr(callback, "monitor", None)
        if getattr(callback, "mode", None) != "auto" or not isinstance(monitor, str):
            continue
        mode = modes.get(monitor.removeprefix("val_"))
        if mode is None:
            continue
        callback.mode = mode
        if isinstance(callback, keras.callbacks.ReduceLROnPlateau):
            callback._reset()  # it chose its comparison at construction
