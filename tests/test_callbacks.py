"""Tests of `keras_vae.callbacks.KLWarmup`: the beta schedule, its argument
checks, and that in a real `fit` the model's `beta` variable follows it epoch
by epoch inside the already traced train step (no retracing)."""

import keras
import pytest

import keras_vae
from keras_vae.callbacks import KLWarmup
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"epochs": 4}, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]),
        ({"epochs": 2, "start": 0.5, "end": 2.0}, [0.5, 1.25, 2.0, 2.0, 2.0, 2.0, 2.0]),
        ({"epochs": 3, "start": 1.0, "end": 0.25}, [1.0, 0.75, 0.5, 0.25, 0.25, 0.25, 0.25]),
        ({"epochs": 1, "end": 0.5}, [0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]),
    ],
)
def test_beta_at_rises_linearly_from_start_to_end_then_stays(kwargs, expected):
    warmup = KLWarmup(**kwargs)
    assert [warmup.beta_at(e) for e in range(7)] == pytest.approx(expected)


@pytest.mark.parametrize("end", [1.0, 0.3])
def test_zero_warmup_epochs_means_beta_is_end_from_the_first_epoch(end):
    warmup = KLWarmup(0, start=0.0, end=end)
    assert [warmup.beta_at(e) for e in range(4)] == [end] * 4


def test_warmup_schedule_depends_only_on_the_epoch_index():
    # What makes a run resumed at epoch e continue the schedule.
    a, b = KLWarmup(10), KLWarmup(10)
    for e in (7, 3, 12, 0):
        b.beta_at(e)
    assert [a.beta_at(e) for e in range(15)] == [b.beta_at(e) for e in range(15)]


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"epochs": -1}, ["epochs", "-1"]),
        ({"epochs": 2.5}, ["epochs", "2.5"]),
        ({"epochs": True}, ["epochs", "True"]),
        ({"epochs": "3"}, ["epochs", "'3'"]),
        ({"epochs": None}, ["epochs", "None"]),
        ({"epochs": 3, "start": -0.1}, ["start", "-0.1"]),
        ({"epochs": 3, "end": -1.0}, ["end", "-1.0"]),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, names):
    with pytest.raises(ValueError) as info:
        KLWarmup(**kwargs)
    message = str(info.value)
    assert "Expected" in message and "Received" in message
    for name in names:
        assert name in message


def test_get_config_round_trip_gives_the_same_schedule():
    warmup = KLWarmup(5, start=0.2, end=0.8)
    config = warmup.get_config()
    assert config == {"epochs": 5, "start": 0.2, "end": 0.8}
    clone = KLWarmup(**config)
    assert [clone.beta_at(e) for e in range(8)] == [warmup.beta_at(e) for e in range(8)]


def test_registered_warmup_deserializes_from_its_serialized_form():
    warmup = KLWarmup(5, start=0.2, end=0.8)
    serialized = keras.saving.serialize_keras_object(warmup)
    assert serialized["registered_name"] == "keras_vae>KLWarmup"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, KLWarmup)
    assert restored.get_config() == warmup.get_config()


class CountingVAE(keras_vae.VAE):
    """Counts traces: a step's Python body runs only while it is traced."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_traces = 0
        self.test_traces = 0

    def train_step(self, data):
        self.train_traces += 1
        return super().train_step(data)

    def test_step(self, data):
        self.test_traces += 1
        return super().test_step(data)


class _Recorder(keras.callbacks.Callback):
    """Records beta and the trace count while each epoch runs."""

    def __init__(self):
        super().__init__()
        self.beta_during_epoch = []
        self.traces_after_epoch = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.beta_during_epoch.append(float(self.model.beta.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.traces_after_epoch.append(self.model.train_traces)


def test_fit_with_warmup_sets_beta_each_epoch_inside_the_traced_step(prototype_images):
    x = prototype_images[0][:128]
    keras.utils.set_random_seed(0)
    vae = CountingVAE(
        GaussianEncoder(2, hidden_units=(16,)),
        BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
        beta=1.0,
        seed=0,
    )
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    recorder = _Recorder()

    history = vae.fit(
        x, epochs=4, batch_size=32, verbose=0, callbacks=[KLWarmup(3), recorder]
    ).history

    expected = [0.0, 1 / 3, 2 / 3, 1.0]
    assert history["beta"] == pytest.approx(expected)
    assert recorder.beta_during_epoch == pytest.approx(expected)
    assert float(vae.beta.numpy()) == pytest.approx(1.0)
    # Traced in the first epoch only: beta changes do not retrace the step.
    assert recorder.traces_after_epoch[0] >= 1
    assert recorder.traces_after_epoch == [recorder.traces_after_epoch[0]] * 4
    # ...and the traced step reads the variable: each epoch's loss is
    # -(reconstruction - beta_e * kl) with that epoch's beta, not beta = 0
    # (the value when the step was traced).
    for epoch, beta in enumerate(expected):
        recon, kl = history["reconstruction"][epoch], history["kl"][epoch]
        assert history["loss"][epoch] == pytest.approx(-(recon - beta * kl), rel=1e-5)
        assert history["elbo"][epoch] == pytest.approx(recon - kl, rel=1e-5)
    assert history["kl"][1] > 0.1  # so beta visibly changes the loss


def test_evaluate_loss_follows_beta_assigned_after_the_step_is_traced(prototype_images):
    x = prototype_images[0][:64]
    keras.utils.set_random_seed(0)
    vae = CountingVAE(
        GaussianEncoder(2, hidden_units=(16,)),
        BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
        seed=0,
    )
    vae.compile(optimizer="adam")
    state = vae.seed_generator.state.numpy()
    losses = {}
    for beta in (0.0, 0.5, 1.0):
        vae.beta.assign(beta)
        vae.seed_generator.state.assign(state)  # the same z samples each time
        logs = vae.evaluate(x, batch_size=32, verbose=0, return_dict=True)
        losses[beta] = logs["loss"]
        if beta == 0.0:
            traces = vae.test_traces
    assert vae.test_traces == traces
    assert losses[0.0] == pytest.approx(-logs["reconstruction"], rel=1e-5)
    assert losses[1.0] == pytest.approx(-logs["elbo"], rel=1e-5)
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * logs["kl"], rel=1e-4)
    assert losses[1.0] > losses[0.5] > losses[0.0]
