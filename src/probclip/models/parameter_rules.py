"""What a tower says about its own parameters: no weight decay, uncertainty-only parameters, locking.

The trainer asks the model (``ProbCLIP.no_weight_decay()``, ``uncertainty_parameter_names()``,
``reset_uncertainty()``, ``lock_image_tower()``, ``lock_text_tower()``) instead of matching parameter names;
each tower lists its own names here, as timm and open_clip models do with ``no_weight_decay()``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["TowerParameterRules"]


class TowerParameterRules:
    """Mixin of a tower (an ``nn.Module``) that names its special parameters in two class attributes.

    ``UNCERTAINTY_PARAMETERS``: parameters that carry uncertainty only (log-variance head, UNC token).
    ``NO_WEIGHT_DECAY``: multi-dimensional parameters without weight decay (embeddings, learned tokens); 0/1-D
    parameters (norm weights, biases) never take weight decay, whatever the tower says.
    """

    UNCERTAINTY_PARAMETERS: tuple[str, ...] = ()
    NO_WEIGHT_DECAY: tuple[str, ...] = ()

    def no_weight_decay(self: nn.Module) -> set[str]:
        """Names (relative to the tower) of the multi-dimensional parameters that take no weight decay."""
        return set(self.NO_WEIGHT_DECAY)

    def uncertainty_parameter_names(self: nn.Module) -> list[str]:
        """Names (relative to the tower, in ``named_parameters`` order) of the uncertainty-only parameters."""
        return [name for name, _ in self.named_parameters() if name in self.UNCERTAINTY_PARAMETERS]

    def lock(self: nn.Module, keep_uncertainty: bool = True) -> list[str]:
        """Freeze the tower (``requires_grad=False``), except its uncertainty parameters when ``keep_uncertainty``.

        Returns the names (relative to the tower) of the frozen parameters.
        """
        keep = set(self.uncertainty_parameter_names()) if keep_uncertainty else set()
        frozen = []
        for name, param in self.named_parameters():
            if name not in keep:
                param.requires_grad_(False)
                frozen.append(name)
        return frozen
