"""PyTorch models: RQ-VAE semantic IDs, UGT encoder, MoE decoder, SASRec baseline."""

from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def members(modules: nn.ModuleList, kind: type[M]) -> list[M]:
    """A ModuleList's modules as the class they were built from (a ModuleList yields plain
    ``nn.Module`` to a type checker); a module of another class is a bug, so it raises."""

    def checked(module: nn.Module) -> M:
        if not isinstance(module, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(module).__name__}")
        return module

    return [checked(m) for m in modules]
