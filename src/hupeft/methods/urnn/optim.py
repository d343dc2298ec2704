"""AdamW whose unitary groups take Algorithm 1's step on the unitary group instead.

Why an optimiser: the manifold step then lives where every other step lives, so its step size
is a parameter group's learning rate, which the run's warm-up and decay schedule scales like
any other, and its state (Adam's moments of U) is saved and resumed with the optimiser's.

Why Adam's preconditioning: Algorithm 1 as printed is plain gradient descent on U with its own
eta. Gradients reaching U are small (and clipped with all others), so at an eta like the other
methods' learning rates U barely moves, while AdamW moves every other parameter by about its
learning rate per step whatever the gradient's scale. The "adam" step keeps Algorithm 1's form
and replaces the gradient G in B by AdamW's direction D = m_hat / (sqrt(v_hat) + eps) (moments
of the real view, as AdamW keeps them), with eta = lr / 2: then -eta B U = -lr (D - U D^H U) / 2,
the projection onto the group's tangent space of the step AdamW would take, so U moves as far as
AdamW would move it at that learning rate, minus the part that would leave the group. The "sgd"
step is the printed one: D = G, eta = lr. U stays exactly unitary either way (exponential of a
skew-Hermitian matrix, then re-projection on drift). Decoupled weight decay does not apply to U:
it would pull U towards 0, off the group.
"""

from __future__ import annotations

import torch

from .unitary import manifold_step

MANIFOLD_STEPS = ("adam", "sgd")


class UnitaryAdamW(torch.optim.AdamW):
    """AdamW; a parameter group with `unitary=True` holds (blocks, b, b, 2) real views of complex
    unitary blocks and takes the manifold step (`manifold_step`: "adam" or "sgd", `renorm_tol`,
    `renorm_every`: the drift is checked on the first step and every that many after)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if not group.get("unitary"):
                continue
            for p in group["params"]:
                if p.grad is not None:
                    self._unitary_step(p, group)
                    p.grad = None  # consumed: AdamW's own step below skips U
        return super().step(closure)

    def _unitary_step(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "u_step" not in state:
            state.update(u_step=0, u_exp_avg=torch.zeros_like(p), u_exp_avg_sq=torch.zeros_like(p),
                         renormalisations=0, manifold_steps=0)
        # Under FSDP, p, its gradient and the moments are DTensors sharded over whole blocks (dim 0):
        # each process steps its own blocks (the step is blockwise) on the local parts.
        grad, lr = _local(p.grad).float(), group["lr"]
        if group["manifold_step"] == "adam":
            beta1, beta2 = group["betas"]
            state["u_step"] += 1
            t = state["u_step"]
            exp_avg, exp_avg_sq = _local(state["u_exp_avg"]), _local(state["u_exp_avg_sq"])
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            m_hat = exp_avg / (1 - beta1 ** t)
            v_hat = exp_avg_sq / (1 - beta2 ** t)
            direction, eta = m_hat / (v_hat.sqrt() + group["eps"]), lr / 2
        else:
            direction, eta = grad, lr
        here = _local(p.data)
        if here.numel() == 0:  # this process holds none of the blocks
            return
        u = torch.view_as_complex(here)
        steps = state.setdefault("manifold_steps", 0)  # absent from optimiser states saved before it
        check = steps % group.get("renorm_every", 1) == 0
        state["manifold_steps"] = steps + 1
        new, reprojected = manifold_step(u, torch.view_as_complex(direction.contiguous()), eta, group["renorm_tol"],
                                         check=check)
        here.copy_(torch.view_as_real(new))
        state["renormalisations"] += int(reprojected)

    def renormalisations(self) -> int:
        """How many times a unitary block drifted past `renorm_tol` and was re-projected."""
        return sum(int(self.state[p].get("renormalisations", 0))
                   for g in self.param_groups if g.get("unitary") for p in g["params"])


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly FSDP-sharded) tensor, sharing its storage."""
    return t.to_local() if hasattr(t, "to_local") else t
