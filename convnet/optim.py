"""The paper's SGD and its learning-rate schedules.

    v <- momentum * v - weight_decay * lr * w - lr * dL/dw ;  w <- w + v

applied by ops.sgd_update to each parameter part on its own device. The momentum buffers
live in the net's Params (Param.momentum); state_dict() gives them in the one-device layout.
"""
import math
from collections.abc import Mapping

from ._checks import float32_number, integer, number


class SGD:
    def __init__(self, net, lr=0.01, momentum=0.9, weight_decay=5e-4):
        # here, not at the first step after a forward and backward: finite as float32 (sgd_update's type)
        self.lr = float32_number(lr, "SGD: lr", minimum=0)
        self.momentum = float32_number(momentum, "SGD: momentum", minimum=0)
        self.weight_decay = float32_number(weight_decay, "SGD: weight_decay", minimum=0)
        self.net = net
        self.steps = 0

    def step(self):
        """One update of every parameter from the gradients of the last backward."""
        from . import ops

        params = self.net.params()
        missing = [p.key for p in params if p.grad is None]
        if missing:
            raise RuntimeError(f"SGD.step: no gradient for {missing[:3]}...: call net.backward() first")
        for p in params:
            ops.sgd_update(p.data, p.grad, p.momentum, self.lr, self.momentum, self.weight_decay)
            p.grad = None  # each gradient is used once
        self.steps += 1

    def state_dict(self):
        """Momentum buffers in the one-device layout ("conv1.weight" -> array) and the settings."""
        return {"momentum": self.net.momentum_dict(), "lr": self.lr, "momentum_factor": self.momentum,
                "weight_decay": self.weight_decay, "steps": self.steps}

    def load_state_dict(self, state):
        """All or nothing: every value is checked before any is loaded."""
        if not isinstance(state, Mapping) or "momentum" not in state:
            raise ValueError("SGD state: expected a dict with the momentum buffers, like state_dict()'s")
        # checked as in __init__: float() took "0.1" or inf from a checkpoint, refused only at the first step
        settings = {attr: float32_number(state[key], f"SGD state: {key}", minimum=0)
                    for key, attr in (("lr", "lr"), ("momentum_factor", "momentum"), ("weight_decay", "weight_decay"))
                    if key in state}
        if "steps" in state:
            settings["steps"] = integer(state["steps"], "SGD state: steps", minimum=0, error=ValueError)
        self.net.load_momentum_dict(state["momentum"])
        for attr, value in settings.items():
            setattr(self, attr, value)


class ReduceOnPlateau:
    """Divide the learning rate by 1/factor (10) when the validation error has not improved
    (by more than `threshold`) for `patience` evaluations in a row; at most `max_cuts` times
    (the paper cut three times). step(val_error) returns True when it cut."""

    def __init__(self, opt, factor=0.1, patience=2, max_cuts=3, threshold=1e-3):
        # (int() took a patience of 1.5 as 1; a negative one cut at every evaluation)
        factor = number(factor, "ReduceOnPlateau: factor", error=ValueError)
        if not 0 < factor < 1:
            raise ValueError(f"ReduceOnPlateau: factor must be in (0, 1), got {factor}")
        threshold = number(threshold, "ReduceOnPlateau: threshold", error=ValueError)
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"ReduceOnPlateau: threshold must be finite and >= 0, got {threshold}")
        self.opt = opt
        self.factor = factor
        self.patience = integer(patience, "ReduceOnPlateau: patience", 0, error=ValueError)
        self.max_cuts = integer(max_cuts, "ReduceOnPlateau: max_cuts", 0, error=ValueError)
        self.threshold = threshold
        self.best = math.inf
        self.bad = 0
        self.cuts = 0

    def step(self, val_error):
        if val_error < self.best - self.threshold:
            self.best = val_error
            self.bad = 0
            return False
        self.bad += 1
        if self.bad >= self.patience and self.cuts < self.max_cuts:
            self.opt.lr *= self.factor
            self.cuts += 1
            self.bad = 0
            return True
        return False

    def state_dict(self):
        return {"best": self.best, "bad": self.bad, "cuts": self.cuts}

    def load_state_dict(self, state):
        best = number(state["best"], "ReduceOnPlateau state: best", error=ValueError)  # inf before any
        if math.isnan(best):
            raise ValueError("ReduceOnPlateau state: best is NaN")
        bad = integer(state["bad"], "ReduceOnPlateau state: bad", 0, error=ValueError)
        cuts = integer(state["cuts"], "ReduceOnPlateau state: cuts", 0, error=ValueError)
        self.best, self.bad, self.cuts = best, bad, cuts


class StepSchedule:
    """lr = base_lr * factor ** (number of milestones reached); step(epoch) sets it."""

    def __init__(self, opt, milestones, factor=0.1, base_lr=None):
        self.opt = opt
        self._set(opt.lr if base_lr is None else base_lr, milestones, factor, "StepSchedule")

    def _set(self, base_lr, milestones, factor, what):
        base_lr = float32_number(base_lr, f"{what}: base_lr", minimum=0)
        if not isinstance(milestones, (list, tuple)):
            raise ValueError(f"{what}: milestones must be a list of epochs, got {milestones!r}")
        milestones = sorted(integer(m, f"{what}: milestones", error=ValueError) for m in milestones)
        # a negative factor made the rate negative (gradient ascent, silently), a NaN one NaN
        factor = number(factor, f"{what}: factor", error=ValueError)
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"{what}: factor must be finite and > 0, got {factor}")
        self.base_lr, self.milestones, self.factor = base_lr, milestones, factor

    def lr_at(self, epoch):
        return self.base_lr * self.factor ** sum(1 for m in self.milestones if epoch >= m)

    def step(self, epoch):
        self.opt.lr = self.lr_at(epoch)
        return self.opt.lr

    def state_dict(self):
        return {"base_lr": self.base_lr, "milestones": self.milestones, "factor": self.factor}

    def load_state_dict(self, state):
        self._set(state["base_lr"], state["milestones"], state["factor"], "StepSchedule state")
