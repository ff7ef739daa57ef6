"""Drop-in use of regtorch from training frameworks, as optional extras.

- :mod:`regtorch.integrations.lightning`: a PyTorch Lightning callback
  (``pip install regtorch[lightning]``);
- :mod:`regtorch.integrations.transformers`: a Hugging Face ``TrainerCallback``, a
  ``compute_loss_func`` and the Trainer's decay groups (``pip install regtorch[transformers]``).

Each submodule imports its framework, and only when it is imported itself: ``import regtorch``
(and this package) import neither.
"""

__all__: list[str] = []
