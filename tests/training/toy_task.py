"""A tiny regression task that exercises the trainer without any model family."""

from __future__ import annotations

import torch


class ToyTask:
    def __init__(self, n: int = 96, dim: int = 4, eval_scores: list[float] | None = None):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.arange(1.0, dim + 1) + 0.5
        self.dim = dim
        self.eval_scores = list(eval_scores or [])
        self.evaluations = 0

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(self.dim, 8), torch.nn.Dropout(0.1),
                                   torch.nn.Linear(8, 1))

    def model_config(self) -> dict:
        return {"dim": self.dim}

    def num_examples(self) -> int:
        return len(self.x)

    def batch(self, indices: torch.Tensor, device: torch.device):
        return self.x[indices].to(device), self.y[indices].to(device)

    def loss(self, model, batch):
        x, y = batch
        loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        return loss, {"mse": loss.item()}

    def evaluate(self, model) -> dict[str, float]:
        self.evaluations += 1
        with torch.no_grad():
            mse = torch.nn.functional.mse_loss(model(self.x).squeeze(-1), self.y).item()
        score = self.eval_scores.pop(0) if self.eval_scores else -mse
        return {"cider_d": score, "mse": mse}
