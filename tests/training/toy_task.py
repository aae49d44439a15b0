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
        return {"score": score, "mse": mse}


class TwoOptimizerToyTask(ToyTask):
    """The same regression fitted by two linear heads, each with its own optimizer and step
    (the shape of a GAN's D step then G step): `first` fits y, `second` what `first` misses.
    SGD with momentum and Adam both carry state that an exact resume must restore."""

    def build_model(self) -> torch.nn.Module:
        return torch.nn.ModuleDict({"first": torch.nn.Linear(self.dim, 1),
                                    "second": torch.nn.Linear(self.dim, 1)})

    def configure_optimizers(self, model) -> dict[str, torch.optim.Optimizer]:
        return {"first": torch.optim.SGD(model["first"].parameters(), lr=0.05, momentum=0.9),
                "second": torch.optim.Adam(model["second"].parameters(), lr=0.01)}

    def train_step(self, model, batch, optimizers) -> dict[str, float]:
        x, y = batch
        first = model["first"](x).squeeze(-1)
        loss_first = torch.nn.functional.mse_loss(first, y)
        optimizers["first"].zero_grad(set_to_none=True)
        loss_first.backward()
        optimizers["first"].step()
        residual = y - first.detach()
        loss_second = torch.nn.functional.mse_loss(model["second"](x).squeeze(-1), residual)
        optimizers["second"].zero_grad(set_to_none=True)
        loss_second.backward()
        optimizers["second"].step()
        return {"loss_first": loss_first.item(), "loss_second": loss_second.item()}

    def evaluate(self, model) -> dict[str, float]:
        with torch.no_grad():
            fit = model["first"](self.x) + model["second"](self.x)
            mse = torch.nn.functional.mse_loss(fit.squeeze(-1), self.y).item()
        return {"score": -mse, "mse": mse}
