"""Choose each tensor's type: the least total measured loss within a byte budget.

A multiple-choice knapsack: each tensor takes exactly one of its candidate types, each type
costs bytes and has a measured loss (losses add: each is measured with that tensor alone
quantized), and the bytes must fit the budget. It is solved exactly by dynamic programming
over the budget cut into ``resolution`` units, each type's cost above the tensor's smallest
rounded *up* to whole units, so the solution always fits the real budget; the rounding costs
at most one unit per tensor (1/131072 of the size range each), and the bytes that rounding
left over are then spent exactly, one upgrade at a time, each the one that lowers the loss most.
The unit depends on the model and candidates only, never on the budget, so the dynamic
programme's loss never grows with the budget (the test checks that the final one does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferrollm.quant.allocate.budget import Budget
from ferrollm.quant.allocate.layout import Layout

RESOLUTION = 1 << 17


@dataclass
class Allocation:
    types: dict[str, str]  # every allocated tensor's type
    loss: float  # sum of the chosen types' measured losses (predicted mean KLD)
    weight_bytes: int
    file_bytes: int
    bpw: float
    budget: Budget

    def to_dict(self) -> dict:
        return {"types": self.types, "loss": self.loss, "weight_bytes": self.weight_bytes,
                "file_bytes": self.file_bytes, "bpw": self.bpw, "budget_kind": self.budget.kind,
                "budget_bytes": self.budget.capacity}  # fmt: skip


def solve(layout: Layout, losses: dict[str, dict[str, float]], budget: Budget,
          resolution: int = RESOLUTION) -> Allocation:  # fmt: skip
    """The allocation of least total loss whose ``budget.kind`` bytes are at most
    ``budget.capacity``. ``losses[tensor][type]`` for every slot and candidate."""
    slots = layout.slots
    costs = [np.array([budget.cost(layout, s, t) for t in s.options], np.int64) for s in slots]
    base = sum(int(c.min()) for c in costs)
    spare = budget.capacity - base - (layout.fixed_bytes if budget.kind == "file" else 0)
    if spare < 0:
        raise ValueError(f"the budget is {-spare} bytes short of the smallest allocation")
    span = sum(int(c.max() - c.min()) for c in costs)
    unit = max(1, -(-span // resolution))
    n_cells = min(spare // unit, resolution) + 1
    # best[c]: least loss of the tensors so far within c units (so non-increasing in c)
    best = np.zeros(n_cells)
    choices = []
    for slot, cost in zip(slots, costs):
        units = -(-(cost - cost.min()) // unit)
        loss = np.array([losses[slot.name][t] for t in slot.options], np.float64)
        table = np.full((len(slot.options), n_cells), np.inf)
        for i, (u, x) in enumerate(zip(units, loss)):
            if u < n_cells:
                table[i, u:] = best[: n_cells - u] + x
        pick = table.argmin(axis=0)  # ties: the smaller type (options are smallest first)
        best = table[pick, np.arange(n_cells)]
        choices.append((pick.astype(np.int16), units))
    types, cell = {}, n_cells - 1
    for slot, (pick, units) in zip(reversed(slots), reversed(choices)):
        i = int(pick[cell])
        types[slot.name] = slot.options[i]
        cell -= int(units[i])
    types = _fill({s.name: types[s.name] for s in slots}, layout, losses, budget)
    used = budget.used(layout, types)
    assert used <= budget.capacity, (used, budget.capacity)
    total = float(sum(losses[n][t] for n, t in types.items()))
    return Allocation(
        types, total, layout.weight_bytes(types), layout.file_bytes(types), layout.bpw(types), budget
    )


def _fill(
    types: dict[str, str], layout: Layout, losses: dict[str, dict[str, float]], budget: Budget
) -> dict[str, str]:
    """Spend the bytes the rounding left: the single change of one tensor's type that lowers the
    loss most and still fits, until none does."""
    left = budget.capacity - budget.used(layout, types)
    while True:
        best = None
        for slot in layout.slots:
            now = types[slot.name]
            cost_now, loss_now = budget.cost(layout, slot, now), losses[slot.name][now]
            for t in slot.options:
                extra, gain = budget.cost(layout, slot, t) - cost_now, loss_now - losses[slot.name][t]
                if gain > 0 and extra <= left and (best is None or (gain, -extra) > best[0]):
                    best = ((gain, -extra), slot.name, t, extra)
        if best is None:
            return types
        types[best[1]] = best[2]
        left -= best[3]
