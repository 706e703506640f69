"""AdaQAT (Gernigon et al.): relaxed bit-widths learned by finite differences during ``fit``.

Quantizers: :class:`tfadaqat.quantizers.DoReFaWeightQuantizer` for weights and
:class:`tfadaqat.quantizers.PACTActivationQuantizer` for activations, each with a relaxed
bit-width ``N`` used as ``b = ceil(N)``. Options: ``grid`` ("symmetric", the default, which
int8 storage holds at every bit-width; "dorefa", the paper's grid, one more level but 8-bit
integers up to 255 that int8 cannot store) and ``rescale`` (DoReFa weights times ``max|w|``).

Settings: an :class:`tfadaqat.adaqat.AdaQATRule`. Training: between the step's forward and
its update, :func:`tfadaqat.adaqat.probe` runs the batch again with one tensor a bit lower and
moves that tensor's ``N`` by the loss difference and the cost term. With a budget, the rule's
prices (its model state, saved with the model) meet it; no penalty is added to the loss.
"""

from __future__ import annotations

import dataclasses

from tfadaqat._compat import tf
from tfadaqat.adaqat import AdaQATRule, create_budget_state, probe
from tfadaqat.methods.base import Method, StepHooks, register
from tfadaqat.quantizers import DoReFaWeightQuantizer, PACTActivationQuantizer

OPTIONS = ("grid", "rescale")  # DoReFa weights'; PACT activations take none


class _ProbeStep(StepHooks):
    """AdaQAT's probe, run with the weights of the step's forward pass (before the update),
    re-running only the layers from the probed tensor's on (the step's forward is recorded)."""

    records_forward = True

    def __init__(self, model, rule: AdaQATRule):
        self.model, self.rule = model, rule

    def before_update(self, x, y, sample_weight, y_pred):
        model, rule = self.model, self.rule
        loss = model.plain_loss(y, y_pred, sample_weight)
        active = None
        if rule.probe_every > 1:
            active = tf.equal(model.optimizer.iterations % rule.probe_every, 0)
        probe(model, rule, x, y, sample_weight, loss, self.forward_record, active=active)


class AdaQAT(Method):
    """AdaQAT's quantizers and its finite-difference bit-width rule."""

    name = "adaqat"
    option_names = OPTIONS
    quantizer_classes = (DoReFaWeightQuantizer, PACTActivationQuantizer)
    learns_bits = True
    settings_config_key = "tfadaqat_adaqat_rule"

    def build_quantizer(self, kind, *, signed, bits, min_bits, max_bits, learn_bits, options):
        if kind == "weight":
            return DoReFaWeightQuantizer(bits=bits, min_bits=min_bits, max_bits=max_bits,
                                         learn_bits=learn_bits, **options)
        return PACTActivationQuantizer(bits=bits, min_bits=min_bits, max_bits=max_bits,
                                       learn_bits=learn_bits, signed=signed)

    def check_budget_arguments(self, *, learn_bits, settings):
        if not learn_bits or settings is None:
            raise ValueError("a budget with method 'adaqat' needs learned bit-widths: pass "
                             "learn_bits=True and an adaqat_rule (not None)")

    def settings_from_arguments(self, *, learn_bits, adaqat_rule):
        """`adaqat_rule` ("default": the authors' settings) when the bits are learned, else None.

        Raises:
          TypeError: For an `adaqat_rule` that is not an AdaQATRule, "default" or None.
        """
        if adaqat_rule == "default":
            adaqat_rule = AdaQATRule()
        if adaqat_rule is not None and not isinstance(adaqat_rule, AdaQATRule):
            raise TypeError("adaqat_rule must be a tfadaqat.adaqat.AdaQATRule, 'default' or "
                            f"None, got {adaqat_rule!r}")
        return adaqat_rule if learn_bits else None

    def settings_to_config(self, settings):
        return dataclasses.asdict(settings)

    def settings_from_config(self, config):
        return AdaQATRule(**config)

    def create_state(self, model):
        """The rule's budget prices and phase targets, with a rule and a budget."""
        if model.method_settings(self.name) is None or model.budget is None:
            return {}
        return create_budget_state(model, model.budget)

    def step_hooks(self, model):
        rule = model.method_settings(self.name)
        return None if rule is None else _ProbeStep(model, rule)


ADAQAT_METHOD = register(AdaQAT())
