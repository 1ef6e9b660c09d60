"""The golden reference: training written straight from the model description.

It shares nothing with the compiler, planner, blob or executor: forward and
backward of each layer by hand in NumPy, so a mistake anywhere in the
compile → plan → blob → device chain shows up as a difference from it.
Computation is float64; the device computes in float32 (the tests bound the
difference).
"""

from __future__ import annotations

import numpy as np

from .zoo import ModelSpec


class ReferenceModel:
    def __init__(self, spec: ModelSpec, params: dict[str, np.ndarray]):
        self.spec = spec
        self.params = {k: v.astype(np.float64) for k, v in params.items()}

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        acts = [x]
        for layer in self.spec.layers:
            a = acts[-1]
            if layer.type == "linear":
                a = a @ self.params[f"{layer.name}.weight"].T + self.params[f"{layer.name}.bias"]
            elif layer.type == "relu":
                a = np.maximum(a, 0)
            acts.append(a)
        return acts[-1], acts

    @staticmethod
    def _softmax_ce(logits: np.ndarray, y: np.ndarray) -> tuple[float, int, np.ndarray]:
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        n = len(y)
        loss = -logp[np.arange(n), y].mean()
        correct = int((logits.argmax(axis=1) == y).sum())
        grad = np.exp(logp)
        grad[np.arange(n), y] -= 1
        return float(loss), correct, grad / n

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        logits, _ = self._forward(np.asarray(x, np.float64))
        loss, correct, _ = self._softmax_ce(logits, np.asarray(y))
        return loss, correct

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, weight_decay: float = 0.0) -> tuple[float, int]:
        """One SGD step on a batch; returns the batch loss and correct count before the update."""
        logits, acts = self._forward(np.asarray(x, np.float64))
        loss, correct, g = self._softmax_ce(logits, np.asarray(y))
        for i in range(len(self.spec.layers) - 1, -1, -1):
            layer, a_in, a_out = self.spec.layers[i], acts[i], acts[i + 1]
            if layer.type == "linear":
                w, b = f"{layer.name}.weight", f"{layer.name}.bias"
                dw, db = g.T @ a_in, g.sum(axis=0)
                g = g @ self.params[w]
                self.params[w] -= lr * (dw + weight_decay * self.params[w])
                self.params[b] -= lr * (db + weight_decay * self.params[b])
            elif layer.type == "relu":
                g = g * (a_out > 0)
        return loss, correct
